"""The package's imports flow one way: cli / user -> generation -> model ->
ops -> backends -> validation (DESIGN.md, "Data flows one way"). Every
``import`` in src/fastdecode (at module level or inside a function) is read
with ``ast``; a module may import its own layer or a lower one, never a
higher one."""
import ast
import pathlib

import pytest

import fastdecode

SRC = pathlib.Path(fastdecode.__file__).parent

# (layer, module-name prefixes), lowest first; a prefix covers its submodules
LAYERS = [
    ("validation", ["fastdecode._validate", "fastdecode._sampling_args", "fastdecode.arrays"]),
    ("backends", ["fastdecode.reference", "fastdecode._native", "fastdecode._cbackend", "fastdecode.backend"]),
    ("ops", ["fastdecode.ops", "fastdecode.formats"]),
    ("model", ["fastdecode.model", "fastdecode.tokenizer", "fastdecode.prefix_cache"]),
    ("generation", ["fastdecode.generation", "fastdecode.lookup", "fastdecode.chat", "fastdecode.session",
                    "fastdecode.batch"]),
    ("front", ["fastdecode.cli", "fastdecode.chat_cli", "fastdecode.__main__", "fastdecode.benchmarks",
               "fastdecode.batch_io", "fastdecode.ray", "fastdecode.dask", "fastdecode"]),
]

# Backward edges that exist today, each with the reason it has not been
# turned around yet. The test fails when one disappears (delete it here) or a
# new one appears.
KNOWN = {
    ("fastdecode.model", "fastdecode.generation"):
        "Model.generate/stream are methods of the model that call generation (imported lazily)",
    ("fastdecode.model", "fastdecode.chat"): "Model.chat/stream_chat, likewise (imported lazily)",
    ("fastdecode.model", "fastdecode.session"): "Model.session, likewise (imported lazily)",
    ("fastdecode.model", "fastdecode.batch"): "Model.generate_many, likewise (imported lazily)",
}


def layer_of(module: str) -> int:
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > best[1]):
                best = (rank, len(p))
    if best is None:
        pytest.fail(f"{module} is in no layer: add it to LAYERS in {__file__}")
    return best[0]


def module_name(path: pathlib.Path) -> str:
    parts = ("fastdecode",) + path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: pathlib.Path):
    """The fastdecode modules that `path` imports, resolved to absolute names."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "fastdecode")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "fastdecode":
                target = node.module
            else:
                continue
            if node.module is None:  # from . import x: x is a module of the package (or a name in it)
                for a in node.names:
                    sub = SRC.joinpath(*(target + "." + a.name).split(".")[1:])
                    is_module = sub.with_suffix(".py").exists() or sub.is_dir() or a.name == "_native"
                    yield target + "." + a.name if is_module else target
            else:
                yield target


def edges():
    for path in sorted(SRC.rglob("*.py")):
        source = module_name(path)
        for target in imports(path):
            yield source, target


def test_imports_flow_one_way():
    backward = {}
    for source, target in edges():
        if layer_of(target) > layer_of(source):
            key = (source, target)
            backward[key] = f"{source} ({LAYERS[layer_of(source)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
    new = {k: v for k, v in backward.items() if k not in KNOWN}
    assert not new, "imports against the flow:\n" + "\n".join(new.values())
    gone = set(KNOWN) - set(backward)
    assert not gone, f"these backward imports are gone: remove them from KNOWN: {sorted(gone)}"


def test_the_reader_sees_the_edges_it_must():
    """The parser resolves relative imports (a check that reads no edge passes always)."""
    found = set(edges())
    assert ("fastdecode.ops", "fastdecode.backend") in found
    assert ("fastdecode.model.transformer", "fastdecode.ops") in found
    assert ("fastdecode.reference", "fastdecode.reference.sampling") in found
    assert layer_of("fastdecode.reference.sampling") < layer_of("fastdecode.ops") < layer_of("fastdecode.model.weights")
