"""Checks whose failure names the call: what the student's function was given, what it returned
and what was expected, all on the first line (the line the grader shows in its table).

    expect(bpe.merge, [1, 2, 3, 1, 2], (1, 2), 9, equals=[9, 3, 9])
    fails with: merge([1, 2, 3, 1, 2], (1, 2), 9) returned [9, 2, 3, 9, 2], expected [9, 3, 9]

Long values are shortened on that line (a tensor of more than a dozen numbers shows as its dtype
and shape); the lines after it, seen with `grade --verbose`, hold them in full. An exception
raised inside the student's function (other than NotImplementedError, which the grader reports
as unfinished) is re-raised as a failure that names the call as well.
"""

import dataclasses
import sys

SHORT = 60  # characters of one value on the first line


def _torch():
    return sys.modules.get("torch")  # None until a test imports it: chapter 1 never does


def _number(x, digits: int = 6) -> str:
    if not isinstance(x, float):
        return repr(x)
    text = f"{x:.{digits}g}"
    return text + ".0" if text.lstrip("-").isdigit() else text  # 1.0, not 1: a float looks like one


def _nested(values) -> str:
    if isinstance(values, list):
        return "[" + ", ".join(_nested(v) for v in values) + "]"
    return _number(values, 4)


def show(value, limit: int = SHORT) -> str:
    """A short, readable repr: small tensors by value, big ones by dtype and shape, configs by the
    fields that differ from the defaults, functions by name."""
    torch = _torch()
    if torch is not None and isinstance(value, torch.Tensor):
        if value.numel() <= 12:
            text = f"tensor({_nested(value.tolist())})"
        else:
            dtype = str(value.dtype).removeprefix("torch.")
            text = f"<{dtype} tensor {'x'.join(map(str, value.shape))}>"
    elif torch is not None and isinstance(value, (torch.nn.Module, torch.optim.Optimizer)):
        return f"<{type(value).__name__}>"
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        changed = [f"{f.name}={getattr(value, f.name)!r}" for f in dataclasses.fields(value)
                   if f.default is dataclasses.MISSING or getattr(value, f.name) != f.default]
        return f"{type(value).__name__}({', '.join(changed)})"  # never cut: every field shown matters
    elif type(value).__name__.startswith("Approx") and hasattr(value, "expected"):  # pytest.approx(x)
        return "about " + show(value.expected, limit)
    elif callable(value) and hasattr(value, "__name__"):
        return value.__name__
    elif isinstance(value, float):
        text = _number(value)
    elif isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        items = ", ".join(show(v, limit) for v in value) + ("," if type(value) is tuple and len(value) == 1 else "")
        text = f"[{items}]" if isinstance(value, list) else f"({items})"
    elif type(value) is dict:
        text = "{" + ", ".join(f"{show(k, limit)}: {show(v, limit)}" for k, v in value.items()) + "}"
    else:
        text = repr(value)
        if text.startswith("<") and " object at 0x" in text:
            text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def call_text(fn, *args, **kwargs) -> str:
    """'merge([1, 2, 3], (1, 2), 9)': how the test calls fn, for a failure message."""
    shown = [show(a) for a in args] + [f"{k}={show(v)}" for k, v in kwargs.items()]
    return f"{getattr(fn, '__name__', 'function')}({', '.join(shown)})"


def call(fn, *args, **kwargs):
    """(fn(*args, **kwargs), the call as text); an error inside fn becomes a failure naming the call."""
    what = call_text(fn, *args, **kwargs)  # before the call: the function may change its arguments
    try:
        return fn(*args, **kwargs), what
    except NotImplementedError:
        raise  # the grader reports the exercise as unfinished
    except Exception as err:
        raise AssertionError(f"{what} raised {type(err).__name__}: {err}") from err


def _full(got, expected) -> str:
    return f"\n  returned: {got!r}\n  expected: {expected!r}"


def _difference(got, expected) -> str:
    """Where two lists, tuples or dicts differ: ' at index 3: 5 instead of 7', ': missing [...]', ... ("" for
    other values)."""
    if isinstance(got, str) and isinstance(expected, str):
        i = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
        start = max(0, i - 12)
        return f" at character {i}: {got[start:i + 12]!r} instead of {expected[start:i + 12]!r}"
    if isinstance(got, (list, tuple)) and isinstance(expected, (list, tuple)):
        names = all(isinstance(x, str) for x in [*got, *expected])  # e.g. parameter names: which are missing
        if names and set(got) != set(expected):
            missing = [x for x in dict.fromkeys(expected) if x not in got]
            extra = [x for x in dict.fromkeys(got) if x not in expected]
            parts = [f"missing {show(missing, 70)}"] if missing else []
            parts += [f"extra {show(extra, 70)}"] if extra else []
            return ": " + ", ".join(parts)
        for i, (a, b) in enumerate(zip(got, expected)):
            if a != b:
                return f" at index {i}: {show(a, 40)} instead of {show(b, 40)}"
        if len(got) != len(expected):
            return f": {len(got)} items instead of {len(expected)}"
    if isinstance(got, dict) and isinstance(expected, dict):
        missing = [k for k in expected if k not in got]
        extra = [k for k in got if k not in expected]
        if missing or extra:
            return ": " + ", ".join(([f"missing keys {show(missing, 50)}"] if missing else [])
                                    + ([f"extra keys {show(extra, 50)}"] if extra else []))
        for key in expected:
            if got[key] != expected[key]:
                return f" at key {show(key, 40)}: {show(got[key], 40)} instead of {show(expected[key], 40)}"
    return ""


class _Nothing:
    """A fresh value that nothing honest is equal to."""


def equals_anything(value) -> bool:
    """Does value claim to equal a value it has never seen? An object whose __eq__ always answers True
    would pass every comparison; no answer an exercise asks for does that."""
    try:
        return bool(value == _Nothing())
    except Exception:  # e.g. a tensor compared with an object: an honest value
        return False


def check(what: str, got, expected, why: str = "", same: bool | None = None, verb: str = "returned") -> None:
    """Assert got == expected (or the verdict `same` given), failing with one line:
    '<what> <verb> <got>, expected <expected>; <why>'. Where long lists or dicts would be cut
    short, the line says where they differ instead. A value that equals anything never passes."""
    if same is None:
        try:
            same = bool(got == expected) and not equals_anything(got)
        except Exception:  # e.g. a tensor of several values compared with a number: not what was asked for
            same = False
    if not same:
        short_got, short_expected = show(got), show(expected)
        difference = _difference(got, expected) if "..." in short_got + short_expected else ""
        if difference:
            first = f"{what} {verb} a {type(got).__name__} that differs from the expected one{difference}"
        else:
            first = f"{what} {verb} {short_got}, expected {short_expected}"
        raise AssertionError(first + (f"; {why}" if why else "") + _full(got, expected))


def check_type(what: str, got, kind: type, why: str = "") -> None:
    """Assert isinstance(got, kind): '<what> returned <got> (a <type>), expected a <kind>; <why>'."""
    if not isinstance(got, kind):
        raise AssertionError(f"{what} returned {show(got)} (a {type(got).__name__}), expected a {kind.__name__}"
                             + (f"; {why}" if why else ""))


def expect(fn, *args, equals, why: str = "", **kwargs):
    """Call fn and check that the result == equals; returns the result."""
    got, what = call(fn, *args, **kwargs)
    check(what, got, equals, why)
    return got


def close(what: str, got, expected, why: str = "", **tolerance) -> None:
    """torch.testing.assert_close(got, expected), failing with one line that names the call."""
    import torch

    suffix = f"; {why}" if why else ""
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            raise AssertionError(f"{what} returned {show(got)}, expected a tensor like {show(expected)}{suffix}")
        if got.shape != expected.shape:
            raise AssertionError(f"{what} returned a tensor of shape {tuple(got.shape)}, expected shape "
                                 f"{tuple(expected.shape)}{suffix}")

    def message(details: str) -> str:
        lines = [line.strip() for line in details.splitlines() if line.strip()]
        if isinstance(expected, torch.Tensor) and got.numel() <= 12 and got.dtype == expected.dtype:
            first = f"{what} returned {show(got)}, expected {show(expected)}"
        else:
            mismatched = next((line.split(": ", 1)[1] for line in lines if line.startswith("Mismatched elements")), "")
            greatest = next((line.split(": ", 1)[1].split(" (up to")[0] for line in lines
                             if line.startswith("Greatest absolute difference")), "")
            value, _, where = greatest.partition(" ")
            try:
                greatest = f"{float(value):.4g} {where}".rstrip()  # 0.5, not 0.5000001788139343
            except ValueError:
                pass
            if mismatched and greatest:
                first = f"{what} is off in {mismatched} of the values, by up to {greatest}"
            else:
                first = f"{what}: {next((line for line in lines if 'not close' not in line), lines[0])}"
        return first + suffix + "\n" + details

    torch.testing.assert_close(got, expected, msg=message, **tolerance)


def expect_close(fn, *args, equals, why: str = "", tolerance: dict | None = None, **kwargs):
    """Call fn and check that the result is close to equals (torch.testing.assert_close); returns it."""
    got, what = call(fn, *args, **kwargs)
    close(what, got, equals, why, **(tolerance or {}))
    return got


def expect_raises(error: type[Exception], fn, *args, why: str = "", **kwargs) -> None:
    """Call fn and check that it raises error."""
    what = call_text(fn, *args, **kwargs)
    try:
        got = fn(*args, **kwargs)
    except error:
        return
    except NotImplementedError:
        raise
    except Exception as err:
        raise AssertionError(f"{what} raised {type(err).__name__}, expected {error.__name__}: {err}") from err
    raise AssertionError(f"{what} returned {show(got)}, expected it to raise {error.__name__}"
                         + (f"; {why}" if why else ""))


def close_parameters(what: str, model, expected_model, why: str = "", **tolerance) -> None:
    """Every parameter of model close to the same parameter of expected_model (the same architecture), failing
    with one line that names the first that is not: '<what>: <name> is off by up to ...; <why>'."""
    import torch

    tolerance = {"atol": 1e-5, "rtol": 1e-4, **tolerance}
    expected = dict(expected_model.named_parameters())
    for name, got in model.named_parameters():
        got, wanted = got.detach(), expected[name].detach()
        if not torch.allclose(got, wanted, **tolerance):
            raise AssertionError(f"{what}: {name} is off by up to {(got - wanted).abs().max().item():.3g}"
                                 + (f"; {why}" if why else "") + _full(got, wanted))


def check_losses(what: str, got, expected: list[float], whose: str, first: str, later: str) -> None:
    """One loss per gradient step of an update (a tensor), close to `whose` (expected, in order), failing with
    one line at the first that is not: why the first could differ (`first`), or a later one (`later`)."""
    import torch

    check_type(what, got, torch.Tensor, "a tensor of one loss per minibatch")
    check(what, tuple(got.shape), (len(expected),), "one loss per minibatch", verb="is a tensor of shape")
    wrong = [i for i, (a, b) in enumerate(zip(got.tolist(), expected)) if abs(a - b) > 1e-5 + 1e-5 * abs(b)]
    if wrong:
        i = wrong[0]
        raise AssertionError(f"{what}: minibatch {i + 1}'s is {got[i].item():.5g}, {whose} {expected[i]:.5g}; "
                             + (first if i == 0 else f"the ones before it match: {later}") + _full(got, expected))
