"""The documentation: the site builds with ``mkdocs build --strict`` (broken links fail), the
pages' python snippets run on the CPU, and what the pages cite exists and matches the code
(test names, file paths, ``signify.x`` names, ``SIGNIFY_*`` settings, the signatures and
defaults of `signify()`, the presets and the documented constructors). About 5 s."""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import re
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _mkdocs() -> list[str]:
    exe = shutil.which("mkdocs") or str(pathlib.Path(sys.executable).parent / "mkdocs")
    if not pathlib.Path(exe).exists():
        pytest.importorskip("mkdocs", reason="mkdocs is not installed")
        return [sys.executable, "-m", "mkdocs"]
    return [exe]


def test_every_nav_page_exists():
    text = (ROOT / "mkdocs.yml").read_text()
    pages = [
        line.split(":", 1)[1].strip() for line in text.splitlines() if line.strip().endswith(".md")
    ]
    assert "ablate.md" in pages and "api.md" in pages
    for page in pages:
        assert (ROOT / "docs" / page).is_file(), page


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed")
    proc = subprocess.run(
        [*_mkdocs(), "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "ablate" / "index.html").is_file()


# ---- what the pages cite exists, and what they say of signatures matches the code -------

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: Pages whose snippets run in `test_snippets_run` (the others hold no runnable snippet).
RUN_PAGES = (
    "README.md",
    "docs/getting-started.md",
    "docs/api.md",
    "docs/transforms.md",
    "docs/conversion.md",
    "docs/adapters.md",
    "docs/stepsize.md",
    "docs/blocks.md",
    "docs/vote.md",
)
#: Snippets that need several processes or a GPU: imports and names checked, not run.
NOT_RUN = ("init_process_group", "register_comm_hook")
#: The start of api.md's signature block (test_api_signature_of_signify_matches_the_code).
SIGNATURE = "signify.signify(\n    base,"


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _snippets(path: pathlib.Path) -> list[tuple[int, str]]:
    """(first line, code) of each ```python fence of a page."""
    out, lines, i = [], path.read_text().splitlines(), 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            j = i + 1
            while lines[j].strip() != "```":
                j += 1
            out.append((i + 2, "\n".join(lines[i + 1 : j]) + "\n"))
            i = j
        i += 1
    return out


def _test_defs() -> dict[str, set[str]]:
    """Function and class names per file of tests/."""
    out = {}
    for f in (ROOT / "tests").glob("*.py"):
        tree = ast.parse(f.read_text())
        kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
        out[f.name] = {n.name for n in ast.walk(tree) if isinstance(n, kinds)}
    return out


def _resolve(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_cited_tests_exist():
    """`tests/f.py::name`, a backticked `test_name` and `test_file.py` name a real test."""
    defs = _test_defs()
    every = set().union(*defs.values())
    bad = []
    for page in DOCS:
        text = page.read_text()
        for m in re.finditer(r"tests/(\w+\.py)::(\w+)", text):
            if m.group(2) not in defs.get(m.group(1), ()):
                bad.append(f"{page.name}:{_line(text, m.start())} {m.group(0)}")
        for m in re.finditer(r"`(test_\w+)`", text):
            if m.group(1) not in every:
                bad.append(f"{page.name}:{_line(text, m.start())} {m.group(1)}")
        for m in re.finditer(r"`(test_\w+\.py)`", text):
            if m.group(1) not in defs:
                bad.append(f"{page.name}:{_line(text, m.start())} {m.group(1)}")
    assert not bad, bad


def test_cited_paths_exist():
    bad = []
    for page in DOCS:
        text = page.read_text()
        for m in re.finditer(
            r"(?<![\w/.])((?:signify|tests|bench|examples|docs)/[\w./-]*\w)", text
        ):
            if not (ROOT / m.group(1)).exists():
                bad.append(f"{page.name}:{_line(text, m.start())} {m.group(1)}")
    assert not bad, bad


def test_cited_signify_names_exist():
    """Every dotted `signify.x.y` of the pages imports or is an attribute."""
    bad = []
    for page in DOCS:
        text = page.read_text()
        for m in re.finditer(r"(?<![\w/.])signify(?:\.\w+)+", text):
            if not _resolve(m.group(0)):
                bad.append(f"{page.name}:{_line(text, m.start())} {m.group(0)}")
    assert not bad, bad


def test_cited_environment_settings_are_read():
    """Every `SIGNIFY_*` variable of the pages is read somewhere in the code."""
    code = "".join(
        f.read_text() for d in ("signify", "tests", "bench") for f in (ROOT / d).rglob("*.py")
    )
    named = {v for page in DOCS for v in re.findall(r"SIGNIFY_[A-Z0-9_]+", page.read_text())}
    assert named
    assert not {v for v in named if v not in code}, "named in the docs, read nowhere"


def _params(sig_text: str) -> dict[str, tuple[str, object]]:
    """``(a, b=1, *, c=None, **kw)`` -> {name: (kind, default)}, var-keyword as ``**``."""
    args = ast.parse(f"def f{sig_text}: pass").body[0].args  # type: ignore[attr-defined]
    out: dict[str, tuple[str, object]] = {}
    pos = args.posonlyargs + args.args
    pos_defaults = [inspect.Parameter.empty] * (len(pos) - len(args.defaults))
    for a, d in zip(pos, pos_defaults + list(args.defaults)):
        out[a.arg] = ("pos", d if d is inspect.Parameter.empty else ast.literal_eval(d))
    for a, d in zip(args.kwonlyargs, args.kw_defaults):
        out[a.arg] = ("kw", inspect.Parameter.empty if d is None else ast.literal_eval(d))
    if args.kwarg is not None:
        out["**"] = ("**", None)
    return out


def _code_params(fn) -> dict[str, tuple[str, object]]:
    out: dict[str, tuple[str, object]] = {}
    for name, p in inspect.signature(fn).parameters.items():
        if name == "self":
            continue
        if p.kind is p.VAR_KEYWORD:
            out["**"] = ("**", None)
        else:
            out[name] = ("kw" if p.kind is p.KEYWORD_ONLY else "pos", p.default)
    return out


def test_api_signature_of_signify_matches_the_code():
    import signify

    text = (ROOT / "docs" / "api.md").read_text()
    block = text.split("```python\nsignify.signify(", 1)[1].split("\n)\n```", 1)[0]
    doc = _params("(" + block + ")")
    code = _code_params(signify.signify)
    code.pop("**")  # unknown options are refused
    assert doc == code
    # the options table: one row per keyword, literal defaults equal
    rows = re.findall(r"^\| `(\w+)` \| [^|]+ \| ([^|]+) \|", text, re.M)
    table = {name: cell.strip() for name, cell in rows if name in code}
    assert set(table) == {n for n, (kind, _) in code.items() if kind == "kw"}
    for name, cell in table.items():
        try:
            value = ast.literal_eval(cell.strip("`"))
        except (ValueError, SyntaxError):
            continue  # prose ("drawn from torch's generator")
        assert value == code[name][1], (name, cell)


def test_runtime_option_lists_match_the_code():
    from signify.options import RUNTIME_OPTIONS

    text = (ROOT / "docs" / "api.md").read_text()
    ctor = re.search(r"((?:`\w+`(?:,| and)?\s+)+)may\s+also be given to the constructor", text)
    runtime = re.search(r"`\*\*runtime`: ([^.]+)\.", text)
    assert ctor and runtime
    for found in (ctor.group(1), runtime.group(1)):
        assert re.findall(r"`(\w+)`", found) == list(RUNTIME_OPTIONS)


def test_preset_signatures_match_the_code():
    import signify

    text = (ROOT / "docs" / "api.md").read_text()
    rows = re.findall(r"^\| `signify\.(\w+)` \| `(\(.*?\))` \|", text, re.M)
    assert {name for name, _ in rows} == {"Signum", "StoSignSGD", "SignAdamax"}
    for name, sig in rows:
        assert _params(sig) == _code_params(getattr(signify, name).__init__), name


def _call_keywords(call_text: str) -> dict[str, object]:
    call = ast.parse(call_text.strip(), mode="eval").body
    assert isinstance(call, ast.Call)
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg}


def test_documented_constructor_defaults_match_the_code():
    """`Blocks(...)` (blocks.md) and `Alias(...)` (stepsize.md) list every argument with its
    default; `AliasAdam(...)` and `MajorityVote(...)` some of them."""
    from signify import transforms as T

    blocks = (ROOT / "docs" / "blocks.md").read_text()
    stepsize = (ROOT / "docs" / "stepsize.md").read_text()
    vote = (ROOT / "docs" / "vote.md").read_text()
    cases = [
        (T.Blocks, re.search(r"\nBlocks\(\n.*?\n\)\n", blocks, re.S), True),
        (T.Alias, re.search(r"Arguments: `(Alias\(.*?\))`", stepsize, re.S), True),
        (T.AliasAdam, re.search(r"`(AliasAdam\(.*?\))`", stepsize, re.S), False),
        (T.MajorityVote, re.search(r"`(MajorityVote\(.*?\))`", vote, re.S), False),
    ]
    for cls, m, complete in cases:
        assert m, cls.__name__
        doc = _call_keywords(m.group(m.lastindex or 0))
        code = {n: d for n, (_, d) in _code_params(cls).items() if n != "**"}
        if complete:
            assert set(doc) == set(code), cls.__name__
        assert {n: code.get(n) for n in doc} == doc, cls.__name__


def test_transforms_export_list_matches():
    from signify import transforms

    text = (ROOT / "docs" / "api.md").read_text()
    para = text.split("## Transforms\n", 1)[1].split("```python", 1)[0]
    assert set(re.findall(r"`([A-Z]\w+)`", para)) == set(transforms.__all__)


class _Model(torch.nn.Module):
    """What the snippets call `model`: numbered layers (for `blocks=`), `model(x)` logits,
    `model(x, y)` the loss."""

    def __init__(self) -> None:
        super().__init__()
        self.h = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(3))
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x, y=None):
        for layer in self.h:
            x = torch.tanh(layer(x))
        out = self.head(x)
        return out if y is None else torch.nn.functional.cross_entropy(out, y)


@pytest.mark.parametrize("page", RUN_PAGES)
def test_snippets_run(page, capsys):
    """Each page's python snippets run in order in one namespace on the CPU, given a tiny
    `model` and `loader`/`data`/`loss_fn`; multi-process ones only import. A snippet under
    ``if __name__ == "__main__":`` runs its imports only."""
    import signify

    batches = [(torch.randn(16, 8), torch.randint(0, 4, (16,))) for _ in range(2)]
    ns: dict = {"__name__": "docs_snippet", "torch": torch, "signify": signify}
    ns.update(model=_Model(), loader=batches, data=batches)
    ns["loss_fn"] = torch.nn.functional.cross_entropy
    for line, code in _snippets(ROOT / page):
        if code.startswith(SIGNATURE):
            continue
        tree, where = ast.parse(code), f"{page}:{line}"
        if any(s in code for s in NOT_RUN):
            imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
            exec(compile(ast.Module(imports, []), where, "exec"), dict(ns))
            binds = {a.asname or a.name for n in imports for a in n.names}
            calls = {
                n.func.id
                for n in ast.walk(tree)
                if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
            }
            if "signify" in calls:  # the function, not the module
                assert "signify" in binds and not any(
                    isinstance(n, ast.Import) and any(a.name == "signify" for a in n.names)
                    for n in imports
                ), where
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exec(compile(tree, where, "exec"), ns)
    capsys.readouterr()
