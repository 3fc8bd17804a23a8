"""The layout docs/architecture.md describes, held: layers import only downward, no import cycle,
no module past the size a reader can hold, one home for every default."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# bottom to top; a module may import only from its own layer or one below (docs/architecture.md)
LAYERS = ["censor.core", "censor.diffusion", "censor.gallery", "censor.rewards", "censor.eval", "censor.sampling",
          "censor.labels", "censor.bench", "rlhf", "censor.studio", "censor.cli"]
MAX_LINES = 300


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(ROOT.glob("censor/**/*.py")) + sorted(ROOT.glob("rlhf/*.py")):
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        if not name.endswith("__main__"):  # entry points sit above every layer
            out[name] = p
    return out


def _layer(module: str) -> int | None:
    return next((i for i, lay in enumerate(LAYERS) if module == lay or module.startswith(lay + ".")), None)


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_every_module_sits_in_a_layer_and_imports_only_downward():
    modules = _modules()
    assert [m for m in modules if _layer(m) is None and m not in ("censor",)] == []
    graph = _imports(modules)
    upward = sorted((m, d) for m, deps in graph.items() for d in deps
                    if _layer(m) is not None and _layer(d) is not None and _layer(d) > _layer(m))
    assert upward == []


def test_no_import_cycle():
    assert _cycles(_imports(_modules())) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("package", ["censor", "rlhf"])
def test_no_module_past_the_size_a_reader_can_hold(package):
    long = {str(p.relative_to(ROOT)): n for p in ROOT.glob(f"{package}/**/*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_defaults_have_one_home():
    """Every guidance and reward default is a field of core.settings; nothing restates the numbers."""
    from censor.core.settings import DEFAULT_GUIDANCE, DEFAULT_REWARD, STUDIO_LIMITS, GuidanceSettings

    assert STUDIO_LIMITS["weight"] == GuidanceSettings.knobs()["weight"].bounds
    assert STUDIO_LIMITS["members"] == type(DEFAULT_REWARD).knobs()["members"].bounds
    # a field changed through the CLI reaches the settings object the sampler builds from
    import argparse

    from censor.cli.args import add_guidance_args, guidance_from_args

    p = argparse.ArgumentParser()
    add_guidance_args(p)
    assert guidance_from_args(p.parse_args([])) == DEFAULT_GUIDANCE
    changed = guidance_from_args(p.parse_args(["--weight", "3", "--window", "10", "500", "--no-calibrate",
                                               "--hinge-quantile", "none"]))
    assert (changed.weight, changed.window, changed.calibrate, changed.hinge_quantile) == (3.0, (10, 500), False, None)
