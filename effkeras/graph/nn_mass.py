"""NN-Mass (Bhardwaj et al., "How does topology influence gradient propagation and model
performance of deep networks with DenseNet-type skip connections?", CVPR 2021, arXiv 1910.00780)
and the count of non-linear units, the two quantities RAN-i scales by (Bhardwaj et al.,
"Restructurable Activation Networks", arXiv 2208.08562).

NN-Mass measures how much of a network's width skip connections carry. For DenseNet-type cells
(layers that concatenate `t_c` channels from earlier layers), `dense_cells` gives the paper's
definition: density of long-range links times width times depth. For residual networks the
NN-Mass code gives a closed form per block, which `model_mass` applies to a built Keras model by
reading each residual Add's branch:

- two kxk convs (ResNet basic block):                     C_in + C_out
- ConvNeXt block (depthwise, 1x1 expand, 1x1 project):    2·C, as RAN-i's code counts it (the basic
                                                           block's C_in + C_out with C_in = C_out)
- bottleneck (1x1 to w, kxk, 1x1):                        (C_in + 2w)·C_in / (2·C_in + w)
- inverted residual (1x1 expand to E, depthwise, 1x1):    (C_in + 2E)·C_in / (2·C_in + E)
  (without the expand layer, E = C_in)

Blocks without a skip add nothing; the stem, downsampling layers and head add nothing. A block
whose shortcut is a 1x1 projection counts like its identity twin, as the NN-Mass code's ResNets
count every block. A model whose residual branches are of another kind (or that has no residual
at all) has no NN-Mass here: `model_mass` returns None.
"""

import math

import keras

from effkeras.graph import leaf_layers
from effkeras.layers.activations import BSplineActivation, LerpPSA, LerpTable


def dense_cells(cells):
    """NN-Mass of DenseNet-type cells, each (depth d_c, width w_c, max skip channels t_c).

    Layers are numbered 0..d_c-1 inside a cell. Layer i >= 2 may receive skip channels from every
    earlier layer but its direct predecessor, p_i = (i-1)·w_c of them, and receives
    t_i = min(t_c, p_i). The cell's link density is ρ_c = Σ t_i / Σ p_i and
    NN-Mass m = Σ_c ρ_c·w_c·d_c (arXiv 1910.00780; its code's `analyze_topology` counts alike).

    Reference:
        - [Bhardwaj et al., How does topology influence gradient propagation and model
            performance of deep networks with DenseNet-type skip connections?, CVPR 2021](
            https://arxiv.org/abs/1910.00780)

    Args:
        cells: iterable of `(depth, width, max_skips)` int triples, one per cell.

    Returns:
        The NN-Mass, a float (cells of fewer than three layers add nothing).
    """
    mass = 0.0
    for depth, width, max_skips in cells:
        possible = [(i - 1) * width for i in range(2, depth)]
        if not possible:  # fewer than three layers: no long-range link can exist
            continue
        received = [min(max_skips, p) for p in possible]
        mass += sum(received) / sum(possible) * width * depth
    return mass


# --- residual blocks of a built Keras model ----------------------------------------------------


def _transform(layer):
    """('dw', k), ('pw', filters), ('conv', filters) for the layers that mix channels or space;
    ('other', None) for any other layer with weights that moves data (grouped/separable convs);
    None for layers the block formulas ignore (normalisation, activations, scales, dropout)."""
    L = keras.layers
    if isinstance(layer, L.DepthwiseConv2D):
        return ("dw", max(layer.kernel_size))
    if isinstance(layer, L.Conv2D):
        if layer.groups != 1:
            return ("other", None)
        return ("pw" if max(layer.kernel_size) == 1 else "conv", layer.filters)
    if isinstance(layer, L.Dense):  # a Dense on feature maps is a 1x1 conv
        return ("pw", layer.units) if len(layer.input.shape) > 2 else ("other", None)
    if isinstance(layer, (L.SeparableConv2D, L.Conv1D, L.Conv3D, keras.Model)):
        return ("other", None)
    return None


def _parents(node):
    return node.parent_nodes


def _ancestors(node):
    seen, stack = set(), [node]
    while stack:
        current = stack.pop()
        if id(current) not in seen:
            seen.add(id(current))
            stack.extend(_parents(current))
    return seen


def _chain(node, stop):
    """Nodes from `node` back to the first node in `stop` (ids), that node last; None if the
    walk meets a merge (a node with several inputs) first."""
    path = [node]
    while id(path[-1]) not in stop:
        parents = _parents(path[-1])
        if len(parents) != 1:
            return None
        path.append(parents[0])
    return path


def block_mass(add_node):
    """NN-Mass of the residual block ending in `add_node` (an Add of two tensors); None when its
    branch is of no known kind.

    Args:
        add_node: a Keras graph node of an Add call with two inputs.

    Returns:
        The block's NN-Mass (an int or float, module docstring's closed forms), or None.
    """
    if len(add_node.parent_nodes) != 2:
        return None
    a, b = add_node.parent_nodes
    chain_a = _chain(a, _ancestors(b))
    if chain_a is None:
        return None
    split = chain_a[-1]  # the block's input: where the two paths meet
    chain_b = _chain(b, {id(split)})
    if chain_b is None:
        return None
    paths = []
    for chain in (chain_a, chain_b):
        ops = [_transform(node.operation) for node in reversed(chain[:-1])]
        paths.append([op for op in ops if op is not None])
    shortcut, branch = sorted(paths, key=len)
    if shortcut and shortcut != [("pw", shortcut[0][1])]:  # only a 1x1 projection may stand there
        return None
    c_in = split.outputs[0].shape[-1]
    c_out = add_node.outputs[0].shape[-1]
    kinds = tuple(kind for kind, _ in branch)
    if kinds == ("conv", "conv"):  # basic block
        return c_in + c_out
    if kinds == ("dw", "pw", "pw") and branch[0][1] > 1:  # ConvNeXt block
        return 2 * c_out
    if kinds == ("pw", "conv", "pw"):  # bottleneck of width w
        w = branch[1][1]
        return (c_in + 2 * w) * c_in / (2 * c_in + w)
    if kinds in (("pw", "dw", "pw"), ("dw", "pw")):  # inverted residual, expansion E
        e = branch[0][1] if kinds[0] == "pw" else c_in
        return (c_in + 2 * e) * c_in / (2 * c_in + e)
    return None


def _is_add(operation):
    # keras.layers.Add, or keras.ops.add written as `x + y` in a functional model.
    return type(operation).__name__ == "Add"


def _residual_masses(model):
    """[block mass or None] for every merge-by-addition in `model` and the models inside it."""
    masses = []
    for operation in getattr(model, "operations", model.layers):
        if isinstance(operation, keras.Model):
            masses.extend(_residual_masses(operation))
        elif _is_add(operation):
            for node in operation._inbound_nodes:
                if len(node.parent_nodes) >= 2:
                    masses.append(block_mass(node))
    return masses


def model_mass(model):
    """NN-Mass of a built functional Keras model (module docstring); None when it has no
    residual block or one of a kind the formulas do not cover.

    Args:
        model: keras.Model. A built functional model (nested models walked into).

    Returns:
        The sum of its residual blocks' masses (an int when whole, else a float), or None.
    """
    masses = _residual_masses(model)
    if not masses or any(m is None for m in masses):
        return None
    total = sum(masses)
    return int(total) if float(total).is_integer() else total


# --- non-linear units ---------------------------------------------------------------------------

# Learned per-channel functions (LERP-PSA, B-splines, their frozen tables) count as one unit per
# output element, as a ReLU does.
NONLINEAR_LAYERS = (
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.PReLU,
    keras.layers.ELU,
    keras.layers.Softmax,
    LerpPSA,
    BSplineActivation,
    LerpTable,
)


def _nonlinear(layer):
    if isinstance(layer, NONLINEAR_LAYERS):
        return True
    activation = getattr(layer, "activation", None)
    return callable(activation) and getattr(activation, "__name__", "") != "linear"


def nonlinear_units(model):
    """Per-image count of non-linear activation outputs: the output elements of activation
    layers (ReLU, GELU, ...) and of layers with a non-linear `activation` (arXiv 2208.08562
    measures expressivity by this count; for ConvNeXt it is the number of GELUs).

    Learned per-channel functions (LERP-PSA, B-splines, their tables) count as a ReLU does.

    Args:
        model: keras.Model. A built functional model.

    Returns:
        The count per image, an int.
    """
    return sum(
        math.prod(layer.output.shape[1:]) for layer in leaf_layers(model) if _nonlinear(layer)
    )
