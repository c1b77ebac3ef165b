"""The type stubs (qkd_sim.pyi) and the docstrings cover the module as it is."""

import ast
import inspect
import pathlib

import qkd_sim

STUBS = pathlib.Path(__file__).resolve().parents[1] / "qkd_sim.pyi"


def stub_functions():
    tree = ast.parse(STUBS.read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            out[node.name] = node
        elif isinstance(node, ast.ClassDef):
            out[node.name] = node
    return out


def public_names():
    return [n for n in dir(qkd_sim) if not n.startswith("_") and n != "qkd_sim"]


def test_every_public_name_has_a_stub_and_a_docstring():
    stubs = stub_functions()
    missing = [n for n in public_names() if n not in stubs]
    assert not missing, f"no stub in qkd_sim.pyi for {missing}"
    extra = [n for n in stubs if not hasattr(qkd_sim, n)]
    assert not extra, f"stubs for names the module lacks: {extra}"
    short = [n for n in public_names() if len(getattr(qkd_sim, n).__doc__ or "") < 60]
    assert not short, f"no real docstring: {short}"


def test_stub_parameters_match_the_functions():
    for name, node in stub_functions().items():
        if not isinstance(node, ast.FunctionDef):
            continue
        a = node.args
        stub = [(p.arg, "pos") for p in a.posonlyargs + a.args]
        stub += [(p.arg, "kw") for p in a.kwonlyargs]
        sig = inspect.signature(getattr(qkd_sim, name))
        real = [(p.name, "kw" if p.kind == p.KEYWORD_ONLY else "pos")
                for p in sig.parameters.values() if p.kind != p.VAR_KEYWORD]
        assert stub == real, (name, stub, real)
        if a.kwarg is not None:
            assert any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()), name
