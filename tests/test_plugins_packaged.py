"""Pass plugins from REAL installed packages, found through the ``kitsune_backend.passes``
entry-point group.

Each package is written to a temporary folder as a ``pyproject.toml`` project with entry
points in the ``kitsune_backend.passes`` group, then installed with
``pip install --no-deps --no-build-isolation --no-index --target <site>`` (offline, about a
second each). A test then runs a script in a subprocess whose ``PYTHONPATH`` holds the chosen
site folders, so ``importlib.metadata`` finds the entry points as it would after a real
``pip install``.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

# package name -> (entry points {name: "module:object"}, the module's source)
PACKAGES = {
    "kitsune_demo_passes": (
        {
            "relu_to_clamp": "kitsune_demo_passes:relu_to_clamp",
            "count_clamps": "kitsune_demo_passes:count_clamps",
            "count_nodes": "kitsune_demo_passes:count_nodes",
            "after_fusion": "kitsune_demo_passes:after_fusion",
        },
        '''
        """Good plugins: a rewrite, two readers that show the order, a post-fusion pass."""
        import torch
        from kitsune_backend import PassResult, PluginPass

        aten = torch.ops.aten


        def relu_to_clamp(gm, ctx):
            """relu(x) -> clamp_min(x, 0.0): same values, so results must not change."""
            count = 0
            for node in gm.graph.nodes:
                if node.op == "call_function" and node.target is aten.relu.default:
                    node.target = aten.clamp_min.default
                    node.args = (node.args[0], 0.0)
                    count += 1
            return PassResult(changed=bool(count), notes=[f"rewrote {count} relu"],
                              stats={"relus_rewritten": count})


        relu_to_clamp.kitsune_stage = "pre_fusion"
        relu_to_clamp.kitsune_order = 1


        def count_clamps(gm, ctx):
            """Sees clamp_min only if relu_to_clamp ran before it."""
            count = sum(1 for n in gm.graph.nodes if n.target is aten.clamp_min.default)
            return PassResult(notes=[f"clamp_min seen: {count}"])


        count_clamps.kitsune_order = 5


        def count_nodes(gm, ctx):
            """Same order as count_clamps: runs after it because its name sorts later."""
            return PassResult(notes=[f"nodes: {len(gm.graph.nodes)}"])


        count_nodes.kitsune_order = 5


        def _after_fusion(gm, ctx):
            return PassResult(notes=[f"post-fusion graph {ctx.graph_name}"])


        after_fusion = PluginPass(name="after_fusion", fn=_after_fusion, stage="post_fusion")
        ''',
    ),
    "kitsune_broken_plugin": (
        {"broken_import": "kitsune_broken_plugin:never_reached"},
        '''
        """A plugin whose import fails: it needs a module that does not exist."""
        import kitsune_missing_dependency_for_tests  # noqa: F401

        def never_reached(gm, ctx):
            return None
        ''',
    ),
    "kitsune_dup_plugin": (
        {"count_nodes": "kitsune_dup_plugin:count_nodes"},
        '''
        """Declares an entry point named like one of kitsune_demo_passes: one is refused."""
        def count_nodes(gm, ctx):
            return None
        ''',
    ),
    "kitsune_raising_plugin": (
        {"raiser": "kitsune_raising_plugin:raiser"},
        '''
        """A plugin that loads but raises when it runs."""
        def raiser(gm, ctx):
            raise RuntimeError("boom from raiser")


        raiser.kitsune_order = 3
        ''',
    ),
}


def write_package(root: pathlib.Path, package: str) -> pathlib.Path:
    """Write ``package`` as an installable project under ``root``; returns its folder."""
    entry_points, source = PACKAGES[package]
    project = root / f"src_{package}"
    (project / package).mkdir(parents=True)
    lines = "\n".join(f'{name} = "{target}"' for name, target in entry_points.items())
    (project / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [build-system]
            requires = ["setuptools>=61"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{package.replace('_', '-')}"
            version = "0.1"

            [tool.setuptools]
            packages = ["{package}"]

            [project.entry-points."kitsune_backend.passes"]
            """
        )
        + lines
        + "\n"
    )
    (project / package / "__init__.py").write_text(textwrap.dedent(source).lstrip())
    return project


def install(project: pathlib.Path, site: pathlib.Path) -> None:
    """``pip install`` the project into the folder ``site``, offline, without dependencies."""
    subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
            "--no-index", "--disable-pip-version-check", "--quiet", "--target", str(site),
            str(project),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


def run_with_sites(script: str, sites: list[pathlib.Path]) -> tuple[dict, str]:
    """Run ``script`` in a fresh interpreter that sees the packages in ``sites``.

    The script reports by printing one line ``RESULT <json>``; returns that object and the
    whole output (for assertion messages).
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*map(str, sites), str(REPO_ROOT)])
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):]), output
    raise AssertionError(f"the script printed no RESULT line:\n{output}")


# What every subprocess runs first: a small MLP trained one step under kitsune, compared
# with eager, and a summary of its records.
_COMPILE = """
import json, torch, torch._dynamo
torch.manual_seed(0)
from kitsune_backend.models import MLP

def train_step(options):
    torch._dynamo.reset()
    model = MLP((8, 16, 16, 4))
    x = torch.randn(3, 8)
    compiled = torch.compile(model, backend="kitsune", options=options)
    out = compiled(x)
    out.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    expected = model(x)
    expected.sum().backward()
    torch.testing.assert_close(out, expected)
    for got, want in zip(grads, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(got, want)

def summary(session):
    return {
        record.name: {
            "passes": [[p.stage, p.name, p.notes] for p in record.passes],
            "declines": [str(d) for d in record.declines],
            "graph_after_plugins": record.graph_after("relu_to_clamp")
            if "relu_to_clamp" in record.stages else "",
            "fallback": record.fallback_reason,
        }
        for record in session.records
    }

def error_chain(exc):
    chain = []
    while exc is not None:
        chain.append([type(exc).__name__, str(exc)])
        exc = exc.__cause__ or exc.__context__
    return chain
"""


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    """Each test package installed into its own site folder: {package: site}."""
    root = tmp_path_factory.mktemp("plugin_packages")
    found = {}
    for package in PACKAGES:
        site = root / f"site_{package}"
        install(write_package(root, package), site)
        found[package] = site
    return found


@pytest.fixture(scope="module")
def all_plugins(sites):
    """One process with every package installed: a normal compile, then a strict one."""
    script = _COMPILE + """
import kitsune_backend
from kitsune_backend.process import PROCESS
train_step({})
result = {"records": summary(kitsune_backend.last_compile()),
          "registered": PROCESS.plugins.names(),
          "broken": {b.name: b.error for b in PROCESS.plugins.broken()}}
try:
    kitsune_backend.register_pass(lambda gm, ctx: None, name="relu_to_clamp")
except kitsune_backend.KitsunePluginError as exc:
    result["register_duplicate"] = str(exc)
try:
    train_step({"strict": True})
except Exception as exc:
    result["strict_error"] = error_chain(exc)
print("RESULT " + json.dumps(result))
"""
    return run_with_sites(script, list(sites.values()))


def test_plugin_passes_run_at_their_stage_in_order(all_plugins):
    result, output = all_plugins
    for name in ("forward", "backward"):
        passes = [(stage, pass_name) for stage, pass_name, _ in result["records"][name]["passes"]]
        assert passes == [
            ("decompose", "decompose"),
            ("cleanup", "cleanup"),
            ("seeds", "seeds"),
            ("cse", "cse"),
            ("constant_fold", "constant_fold"),
            ("permutes", "permutes"),
            ("pre_fusion", "relu_to_clamp"),  # order 1
            ("pre_fusion", "count_clamps"),  # order 5, name sorts first
            ("pre_fusion", "count_nodes"),  # order 5
            ("batch_split", "batch_split"),
            ("fusion", "fusion"),
            ("matmul_bias", "matmul_bias"),
            ("post_fusion", "after_fusion"),
            ("streams", "streams"),
            ("memory_plan", "memory_plan"),
            ("kernels", "kernels"),
            ("precompile", "precompile"),
            ("arena", "arena"),
            ("streams_code", "streams_code"),
            ("capture", "capture"),
        ], output
        assert result["records"][name]["fallback"] == ""
    forward = result["records"]["forward"]
    notes = {pass_name: pass_notes for _, pass_name, pass_notes in forward["passes"]}
    assert notes["relu_to_clamp"] == ["rewrote 2 relu"]
    assert notes["count_clamps"] == ["clamp_min seen: 2"]  # it ran after the rewrite
    assert notes["after_fusion"] == ["post-fusion graph forward"]
    assert "aten.clamp_min.default" in forward["graph_after_plugins"]
    assert "aten.relu.default" not in forward["graph_after_plugins"]


def test_broken_and_raising_plugins_are_reported_and_skipped(all_plugins):
    result, output = all_plugins
    assert "broken_import" in result["broken"]
    assert "ModuleNotFoundError" in result["broken"]["broken_import"]
    for name in ("forward", "backward"):
        declines = result["records"][name]["declines"]
        broken = [d for d in declines if "'broken_import'" in d]
        assert len(broken) == 1, declines  # once per graph, not once per plugin stage
        assert "kitsune_missing_dependency_for_tests" in broken[0]
        raised = [d for d in declines if "'raiser'" in d]
        assert len(raised) == 1 and "RuntimeError: boom from raiser" in raised[0], declines
    # the compile went on (train_step compared against eager) and the raiser left no record
    assert "raiser" not in [p[1] for p in result["records"]["forward"]["passes"]]


def test_duplicate_names_are_refused(all_plugins):
    result, output = all_plugins
    # two installed packages declare "count_nodes": one registers, the other is refused
    assert "count_nodes" in result["registered"]
    assert "already registered" in result["broken"]["count_nodes"], result["broken"]
    # register_pass refuses a name an entry point holds
    assert "already registered" in result["register_duplicate"]
    assert "entry point kitsune_demo_passes:relu_to_clamp" in result["register_duplicate"]


def test_strict_raises_on_a_broken_plugin(all_plugins):
    result, output = all_plugins
    chain = result["strict_error"]
    assert any(kind == "KitsunePluginError" for kind, _ in chain), chain
    message = next(text for kind, text in chain if kind == "KitsunePluginError")
    assert "failed" in message and ("'broken_import'" in message or "'count_nodes'" in message)


def test_strict_raises_on_a_plugin_that_raises(sites):
    script = _COMPILE + """
try:
    train_step({"strict": True})
    result = {"raised": None}
except Exception as exc:
    result = {"raised": error_chain(exc)}
print("RESULT " + json.dumps(result))
"""
    result, output = run_with_sites(
        script, [sites["kitsune_demo_passes"], sites["kitsune_raising_plugin"]]
    )
    chain = result["raised"]
    assert chain is not None, output
    messages = [text for kind, text in chain if kind == "KitsunePluginError"]
    assert messages and "'raiser'" in messages[0] and "boom from raiser" in messages[0], chain
