"""inspect.graph on the seeds: fan-out of a shared weight, the backward pass, renderings and errors."""

import shutil
import xml.etree.ElementTree as ET

import jax
import jax.numpy as jnp
import pytest
import see_the_graph as seeds

import funcgrad as fg
from funcgrad import inspect, nn
from funcgrad.errors import MissingToolError, ShapeError, TraceError
from funcgrad.inspect.graph import dot_program


def inputs(g, label):
    (node,) = [n for n in g.nodes if n.kind == "input" and n.op == label]
    return node


def ancestors(g, node_id):
    """Every node whose value reaches ``node_id``."""
    parents = {}
    for e in g.edges:
        parents.setdefault(e.dst, []).append(e.src)
    seen, stack = set(), [node_id]
    while stack:
        for p in parents.get(stack.pop(), []):
            if p not in seen:
                seen.add(p)
                stack.append(p)
    return seen


def past_casts(g, node_id):
    node = g.node(node_id)
    while node.op == "convert_element_type":
        (node,) = [g.node(e.dst) for e in g.edges if e.src == node.id]
    return node


W = "params.dense_0.w"


def test_seed2_forward_uses_the_weight_twice():
    g = inspect.graph(seeds.seed2_loss, *seeds.SEED2_ARGS)
    w = inputs(g, W)
    assert g.fan_out()[w.id] == 2
    # Into the prediction (Dense's matmul, after a dtype cast where there is one) and the penalty.
    users = sorted(past_casts(g, e.dst).op for e in g.edges if e.src == w.id)
    assert users == ["dot_general", "square"]
    assert [n.op for n in g.nodes if n.kind == "input"] == [
        "params.dense_0.b", W, "x", "t", "lam",
    ]  # fmt: skip
    assert inputs(g, "params.dense_0.b").id not in g.fan_out()


def test_seed2_backward_holds_the_sigmoid_derivative_and_the_lambda_w_term():
    g = inspect.graph(seeds.seed2_loss, *seeds.SEED2_ARGS, backward=True)
    assert g.backward
    derivative = g.find(scope="sigmoid.backward")
    assert derivative and all(n.phase == "backward" for n in derivative)
    (grad_w,) = [n for n in g.nodes if n.kind == "output" and n.op == "grad " + W]
    (total,) = [g.node(e.src) for e in g.edges if e.dst == grad_w.id]
    # The two uses of w give two gradients, and add_any adds them: the seeds' shared weight.
    assert total.op == "add_any" and total.phase == "backward"
    terms = [e.src for e in g.edges if e.dst == total.id]
    assert len(terms) == 2
    lam, w = inputs(g, "lam").id, inputs(g, W).id
    x = inputs(g, "x").id
    penalty = [t for t in terms if lam in ancestors(g, t)]
    fit = [t for t in terms if x in ancestors(g, t)]
    assert len(penalty) == 1 and w in ancestors(g, penalty[0])  # λ·w
    assert len(fit) == 1 and fit != penalty
    assert any(derivative_node.id in ancestors(g, fit[0]) for derivative_node in derivative)
    assert lam not in ancestors(g, fit[0])


def test_backward_nodes_link_to_the_forward_nodes_they_come_from():
    g = inspect.graph(seeds.seed1_cost, *seeds.SEED1_ARGS, backward=True)
    linked = [n for n in g.nodes if n.forward]
    assert linked
    for n in linked:
        assert n.phase == "backward" and g.node(n.forward).phase == "forward"
    # Dense's backward dot_general comes from its forward dot_general.
    (fwd_dot,) = [n for n in g.find("dot_general") if n.phase == "forward"]
    (bwd_dot,) = [n for n in g.find("dot_general") if n.phase == "backward"]
    assert bwd_dot.forward == fwd_dot.id
    assert "dense_0" in bwd_dot.scope and bwd_dot.scope.startswith("transpose(")


def mlp(depth):
    layers = []
    for _ in range(depth):
        layers += [nn.Dense(16), nn.tanh]
    model = nn.serial(*layers, nn.Dense(1))
    x = jnp.ones((8, 4))
    params = model.init(jax.random.key(0), x)
    return lambda p: jnp.mean(model.apply(p, x) ** 2), params


def test_mlp_node_counts_are_stable_and_grow_by_a_fixed_step_per_layer():
    counts = {}
    for depth in (2, 3, 4):
        loss, params = mlp(depth)
        g = inspect.graph(loss, params, backward=True)
        again = inspect.graph(loss, params, backward=True)
        assert g == again
        dots = [n for n in g.find("dot_general")]
        fwd = sum(n.phase == "forward" for n in dots)
        bwd = sum(n.phase == "backward" for n in dots)
        # Each Dense: one forward matmul; backward, one for its weights and one for its input,
        # except the first, whose input x is not differentiated.
        assert (fwd, bwd) == (depth + 1, 2 * (depth + 1) - 1)
        counts[depth] = (len(g.nodes), len(g.edges))
    step = counts[3][0] - counts[2][0]
    assert step > 0 and counts[4][0] - counts[3][0] == step
    assert counts[4][1] - counts[3][1] == counts[3][1] - counts[2][1]


def test_registered_primitives_are_one_node_until_expanded():
    def f(x):
        return jnp.sum(fg.log1pexp(x) * fg.sigmoid(x))

    g0 = inspect.graph(f, jnp.ones(3))
    assert {n.op for n in g0.nodes if n.kind == "call"} == {"log1pexp", "sigmoid"}
    g1 = inspect.graph(f, jnp.ones(3), depth=1)
    assert {c.label for c in g1.clusters} >= {"log1pexp", "sigmoid"}
    inside = [n for n in g1.nodes if n.cluster is not None]
    assert {"exp", "log1p"} <= {n.op for n in inside}
    # Expanding inlines: the outputs of the call now come from nodes inside its cluster.
    assert not any(n.kind == "call" and n.op in ("log1pexp", "sigmoid") for n in g1.nodes)


def test_control_flow_bodies_expand_into_clusters():
    def f(x):
        def body(c, xi):
            return c * xi + 1.0, jnp.sin(c)

        c, ys = jax.lax.scan(body, 0.0, x)
        w = jax.lax.while_loop(lambda v: v < 10.0, lambda v: v * 2.0, c)
        return jax.lax.cond(w > 0, jnp.cos, jnp.tanh, w) + jnp.sum(ys)

    g0 = inspect.graph(f, jnp.ones(4))
    assert {n.op for n in g0.nodes if n.kind == "call"} == {"scan ×4", "while", "cond"}
    g = inspect.graph(f, jnp.ones(4), depth=1)
    labels = sorted(c.label for c in g.clusters)
    assert labels == ["cond branch 0", "cond branch 1", "scan ×4 body", "while body", "while cond"]
    (scan,) = [n for n in g.nodes if n.op == "scan ×4"]
    body = next(c.id for c in g.clusters if c.label == "scan ×4 body")
    assert {"mul", "add", "sin"} <= {n.op for n in g.nodes if n.cluster == body}
    # The body's results flow into the scan node, whose results flow on.
    assert any(g.node(e.src).cluster == body for e in g.edges if e.dst == scan.id)
    assert "[scan ×4 body]" in g.to_text()


@pytest.mark.x64
def test_text_lists_every_node_with_its_operands():
    g = inspect.graph(seeds.seed2_loss, *seeds.SEED2_ARGS)
    text = g.to_text()
    assert text.splitlines()[0] == f"graph loss: {len(g.nodes)} nodes, {len(g.edges)} edges"
    assert len(text.splitlines()) == len(g.nodes) + 1
    assert f"input  {W}  f64[1,1]  fan-out ×2" in text


def test_dot_marks_fan_out_and_links_the_passes():
    g = inspect.graph(seeds.seed2_loss, *seeds.SEED2_ARGS, backward=True)
    dot = g.to_dot()
    w = inputs(g, W)
    assert dot.startswith('digraph "loss" {') and dot.rstrip().endswith("}")
    assert "subgraph cluster_forward" in dot and "subgraph cluster_backward" in dot
    assert f'xlabel="fan-out ×{g.fan_out()[w.id]}"' in dot
    assert dot.count('color="#d62728", penwidth=2];') == g.fan_out()[w.id]
    assert dot.count("style=dashed") == sum(n.forward is not None for n in g.nodes)


def svg_texts(svg):
    root = ET.fromstring(svg)
    return [t.text for t in root.iter("{http://www.w3.org/2000/svg}text") if t.text]


def test_svg_parses_and_names_the_expected_nodes(tmp_path):
    g = inspect.graph(seeds.seed2_loss, *seeds.SEED2_ARGS, backward=True)
    if dot_program() is None:  # the dev extra installs graphviz-pure; without it, the error
        with pytest.raises(MissingToolError, match="apt-get install graphviz"):
            g.to_svg()
        return
    texts = svg_texts(g.to_svg())
    for expected in (W, "dot_general", "add_any", "forward pass", "backward pass", "fan-out ×3"):
        assert expected in texts
    saved = g.save(tmp_path / "g.svg")
    assert svg_texts(saved.read_text()) == texts
    png = g.save(tmp_path / "g.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png", "g.svg"]  # no temporaries left


def test_graphviz_pure_draws_the_same_pictures_as_graphviz(monkeypatch, tmp_path):
    # graphviz-pure (in the dev extra; pip-installable, no root) stands in when `dot` is missing.
    g = inspect.graph(seeds.seed2_loss, *seeds.SEED2_ARGS, backward=True)
    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "dot" else which(name))
    assert dot_program().endswith("graphviz-pure")
    texts = svg_texts(g.to_svg())
    for expected in (W, "dot_general", "add_any", "forward pass", "backward pass", "fan-out ×3"):
        assert expected in texts
    assert g.save(tmp_path / "g.png").read_bytes().startswith(b"\x89PNG")


def test_missing_graphviz_says_how_to_install_it(monkeypatch, tmp_path):
    g = inspect.graph(jnp.sin, jnp.ones(2))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(
        MissingToolError, match=r"pip install graphviz-pure.*apt-get install graphviz.*Graph.to_dot"
    ):
        g.save(tmp_path / "g.svg")
    assert list(tmp_path.iterdir()) == []
    assert g.save(tmp_path / "g.dot").read_text() == g.to_dot()
    assert g.save(tmp_path / "g.txt").read_text() == g.to_text() + "\n"


def test_save_rejects_an_unknown_file_type(tmp_path):
    g = inspect.graph(jnp.sin, jnp.ones(2))
    with pytest.raises(ValueError, match=r"unknown file type '.jpeg'.*\.svg, \.png"):
        g.save(tmp_path / "g.jpeg")


def test_python_control_flow_on_a_traced_value_is_a_clear_error():
    def f(x):
        return x if x.sum() > 0 else -x

    with pytest.raises(TraceError, match=r"f cannot be traced: it uses Python control flow"):
        inspect.graph(f, jnp.ones(2))
    with pytest.raises(TraceError, match="jnp.where, jax.lax.cond"):
        inspect.graph(f, jnp.ones(2), backward=True)


def test_backward_needs_a_scalar_float_function():
    with pytest.raises(ShapeError, match=r"sin must return one float scalar.*returns f32\[3\]"):
        inspect.graph(jnp.sin, jnp.ones(3), backward=True)
    with pytest.raises(ValueError, match=r"argnums \[2\] out of range for 1 argument"):
        inspect.graph(jnp.sum, jnp.ones(3), backward=True, argnums=2)
    with pytest.raises(ValueError, match="depth must be an int >= 0; got -1"):
        inspect.graph(jnp.sin, jnp.ones(3), depth=-1)


def test_argnums_picks_the_differentiated_inputs():
    g = inspect.graph(
        lambda w, x: jnp.sum(w * x), jnp.ones(2), jnp.ones(2), backward=True, argnums=(0, 1)
    )
    assert [n.op for n in g.nodes if n.kind == "output"] == ["value", "grad w", "grad x"]


def test_shape_dtype_structs_are_enough():
    spec = jax.ShapeDtypeStruct((5, 3), jnp.float32)
    g = inspect.graph(lambda x: jnp.tanh(x).sum(), spec)
    assert g.node("in0").outputs == ("f32[5,3]",)
