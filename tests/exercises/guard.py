"""Notice when a student's script changes the code that the exercise tests compare it with.

The tests run a student's functions and the course's reference code (gpt_scratch, torch, these
test files and checks.py) in one process. So a script could replace a reference, e.g.

    gpt_scratch.model.GPT.num_parameters = lambda self: count_parameters(self.config)

and "student == reference" would hold whatever the student wrote. conftest.py compares the code
with a Snapshot after it imports a script and after every test: `changes()` names what differs,
`restore()` puts the originals back, so that the exercise concerned scores 0 and the next test
compares with the real code again. One snapshot, taken once the tests are imported, serves the
whole run (taking it or comparing with it costs about 0.02 s):

    course_code = Snapshot()
    ...                            # the student's code runs
    course_code.changes()          # ['gpt_scratch.model.GPT.num_parameters']
    course_code.restore()

What is watched: every name in the course's modules and the test modules; the functions and
classes of torch, torch.nn, torch.nn.functional, torch.testing, math and builtins; the attributes
of every class found there; the code and default arguments of every function found there; and
which module object sys.modules holds under each of those names.
"""

import builtins  # noqa: F401 (watched through sys.modules)
import math  # noqa: F401
import sys
import types

COURSE = ("gpt_scratch", "conftest", "checks", "guard", "test_ch", "hidden_test_ch")  # every name counts
LIBRARIES = ("torch", "torch.nn", "torch.nn.functional", "torch.nn.init", "torch.testing", "math", "builtins")
MISSING = object()  # what a name that was removed holds


def watched_modules() -> dict[str, tuple[types.ModuleType, bool]]:
    """{module name: (module, whether every name counts or only functions and classes)}."""
    watched = {}
    for name, module in list(sys.modules.items()):
        if not isinstance(module, types.ModuleType):
            continue
        if name.split(".")[0] == "gpt_scratch" or name.startswith(COURSE):
            watched[name] = (module, True)
        elif name in LIBRARIES:
            watched[name] = (module, False)
    return watched


def is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def code_of(value) -> tuple | None:
    """What a function runs: its code and default arguments (a staticmethod or classmethod's
    function's); None for anything else."""
    function = getattr(value, "__func__", value)
    if not isinstance(function, types.FunctionType):
        return None
    return function.__code__, function.__defaults__, function.__kwdefaults__


def same_code(value, code: tuple | None) -> bool:
    """Whether value runs the code recorded by code_of() (checked without making new objects, so
    that comparing triggers no garbage collection, which is slow once torch is loaded)."""
    if code is None:
        return True
    function = getattr(value, "__func__", value)
    return (getattr(function, "__code__", None) is code[0] and function.__defaults__ is code[1]
            and function.__kwdefaults__ is code[2])


def torchs_own_wrapper(now, before) -> bool:
    """Whether now is a wrapper torch itself put around before: importing torch._dynamo (which an
    optimizer does on first use) replaces torch.manual_seed with torch._disable_dynamo(torch.manual_seed)."""
    torch = sys.modules.get("torch")
    code = getattr(now, "__code__", None)
    return (torch is not None and getattr(now, "__wrapped__", None) is before and code is not None
            and code.co_filename.startswith(torch.__file__.removesuffix("__init__.py")))


class Snapshot:
    """The watched names and what they held when the snapshot was taken."""

    def __init__(self):
        self.modules = watched_modules()
        self.values = {}  # dotted name -> (owner, attribute, value, code_of(value))
        self.class_names = {}  # dotted class name -> (class, its own attribute names)
        for module_name, (module, every_name) in self.modules.items():
            for attribute, value in list(vars(module).items()):
                if is_dunder(attribute) or not (every_name or callable(value)):
                    continue
                self.values[f"{module_name}.{attribute}"] = (module, attribute, value, code_of(value))
                if isinstance(value, type):
                    self.watch_class(value)

    def watch_class(self, cls: type) -> None:
        name = f"{cls.__module__}.{cls.__qualname__}"  # one name, wherever the class is imported
        if name in self.class_names:
            return
        own = dict(vars(cls))
        self.class_names[name] = (cls, {attribute for attribute in own if not is_dunder(attribute)})
        for attribute, value in own.items():
            self.values[f"{name}.{attribute}"] = (cls, attribute, value, code_of(value))

    def changes(self) -> list[str]:
        """The dotted names that now hold something else (or were added to a class, or removed)."""
        changed = [f"sys.modules[{name!r}]" for name, (module, _) in self.modules.items()
                   if sys.modules.get(name) is not module]
        wrapped = {}
        for name, (owner, attribute, value, code) in self.values.items():
            now = vars(owner).get(attribute, MISSING)
            if now is value and same_code(now, code):
                continue
            if torchs_own_wrapper(now, value):
                wrapped[name] = (owner, attribute, now, code_of(now))
            else:
                changed.append(name)
        self.values.update(wrapped)
        for name, (cls, attributes) in self.class_names.items():
            added = [a for a in vars(cls) if not is_dunder(a) and a not in attributes]
            changed += [f"{name}.{attribute}" for attribute in added]  # e.g. a method that hides its base's
        return changed

    def restore(self) -> None:
        """Put back every watched name as it was."""
        for name, (module, _) in self.modules.items():
            sys.modules[name] = module
        for owner, attribute, value, code in self.values.values():
            if vars(owner).get(attribute, MISSING) is not value:
                setattr(owner, attribute, value)
            if not same_code(value, code):
                function = getattr(value, "__func__", value)
                function.__code__, function.__defaults__, function.__kwdefaults__ = code
        for cls, attributes in self.class_names.values():
            for attribute in [a for a in vars(cls) if not is_dunder(a) and a not in attributes]:
                delattr(cls, attribute)
