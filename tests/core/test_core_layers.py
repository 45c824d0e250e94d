"""The layers: lower packages never import higher ones (counting imports inside functions).

ops (kernels) < models (networks) < diffusion / data / evaluation / training < launcher; nothing in
lamamba/ imports the jobs above it (launcher, data_pipeline). Guidance, for instance, is composed at
the diffusion layer around a model, never inside it.
"""

from test_import_cycles import PACKAGES, REPO, import_graph

HIGHER = ("lamamba.diffusion", "lamamba.training", "lamamba.evaluation", "lamamba.data", "launcher",
          "data_pipeline")
RULES = {
    "lamamba.ops": HIGHER + ("lamamba.models",),
    "lamamba.models": HIGHER,
    "lamamba": ("launcher", "data_pipeline"),
}


def violations(graph):
    found = []
    for module, deps in sorted(graph.items()):
        for lower, forbidden in RULES.items():
            if module == lower or module.startswith(lower + "."):
                found += [f"{module} imports {dep}" for dep in sorted(deps)
                          if any(dep == f or dep.startswith(f + ".") for f in forbidden)]
    return found


def test_a_model_importing_the_diffusion_is_caught():
    graph = {"lamamba.models.net": {"lamamba.diffusion.guidance"}, "lamamba.diffusion.guidance": set()}
    assert violations(graph) == ["lamamba.models.net imports lamamba.diffusion.guidance"]


def test_lower_layers_never_import_higher_ones():
    bad = violations(import_graph(REPO, PACKAGES))
    assert not bad, "layering violations: " + "; ".join(bad)
