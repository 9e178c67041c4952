"""A StudentNet's constructor arguments, read from a checkpoint's tensors in the order they were saved.

Students renamed layers, dropped conv biases, added a BatchNorm after each pointwise conv or a
hidden layer to the classifier; the shapes in order show all of that whatever the keys are called
(only the last part of each key, `weight`, `bias`, `running_mean`..., is read). Where the MaxPools
are, which convs have stride 2, the activations and the preprocessing leave no trace in tensors.
"""

from __future__ import annotations

BN_LEAVES = ("weight", "bias", "running_mean", "running_var")


def studentnet_from_tensors(state: dict) -> dict:
    """widths, num_classes, in_channels, head, bias and pointwise_bn; ValueError naming the first tensor that does
    not fit a StudentNet."""
    items = [(k.rsplit(".", 1)[-1], k, tuple(v.shape)) for k, v in state.items()
             if not k.endswith("num_batches_tracked")]
    reader = _Reader(items)
    first = reader.take("weight", lambda s: len(s) == 4 and s[2:] == (3, 3) and s[1] in (1, 3), "a 3x3 first conv")
    widths, in_channels = [first[0]], first[1]
    bias = reader.bias(first[0])
    reader.batchnorm(first[0])
    biases, pointwise_bn = [bias], []
    while reader.peek_is(lambda s: len(s) == 4 and s[1:] == (1, 3, 3)):
        prev = widths[-1]
        reader.take("weight", lambda s, p=prev: s == (p, 1, 3, 3), f"a depthwise 3x3 conv on {prev} channels")
        biases.append(reader.bias(prev))
        reader.batchnorm(prev)
        width = reader.take("weight", lambda s, p=prev: len(s) == 4 and s[1:] == (p, 1, 1),
                            f"a pointwise conv from {prev} channels")[0]
        biases.append(reader.bias(width))
        pointwise_bn.append(reader.peek_is(lambda s, w=width: s == (w,), leaf="weight"))
        if pointwise_bn[-1]:
            reader.batchnorm(width)
        widths.append(width)
    linears = [widths[-1]]
    while reader.peek_is(lambda s, n=linears[-1]: len(s) == 2 and s[1] == n):
        linears.append(reader.take("weight", lambda s: True, "a Linear layer")[0])
        if not reader.bias(linears[-1]):
            raise ValueError(f"{reader.last}: a Linear layer without bias; StudentNet's classifier has biases")
    if reader.rest():
        raise ValueError(f"{reader.rest()[0][1]} {list(reader.rest()[0][2])} does not fit a StudentNet after "
                         f"{reader.last}")
    if len(widths) < 2 or len(linears) < 2:
        raise ValueError("no depthwise blocks" if len(widths) < 2 else f"no Linear classifier on {widths[-1]} features")
    if len(set(biases)) > 1 or len(set(pointwise_bn)) > 1:
        raise ValueError("some convs have a bias (or a BatchNorm after the pointwise conv) and others not")
    return {"widths": widths, "num_classes": linears[-1], "in_channels": in_channels, "head": linears[1:-1],
            "bias": biases[0], "pointwise_bn": pointwise_bn[0]}


class _Reader:
    """Walks (leaf, key, shape) triples in order."""

    def __init__(self, items):
        self.items, self.pos, self.last = items, 0, "the start"

    def rest(self):
        return self.items[self.pos:]

    def peek_is(self, test, leaf: str = "weight") -> bool:
        return self.pos < len(self.items) and self.items[self.pos][0] == leaf and test(self.items[self.pos][2])

    def take(self, leaf: str, test, what: str) -> tuple:
        if not self.peek_is(test, leaf):
            found = self.items[self.pos] if self.pos < len(self.items) else None
            raise ValueError(f"expected {what} after {self.last}, found "
                             + (f"{found[1]} {list(found[2])}" if found else "the end"))
        self.last = self.items[self.pos][1]
        self.pos += 1
        return self.items[self.pos - 1][2]

    def bias(self, n: int) -> bool:
        """An optional bias of n values."""
        if self.peek_is(lambda s: s == (n,), leaf="bias"):
            self.take("bias", lambda s: True, "")
            return True
        return False

    def batchnorm(self, n: int) -> None:
        for leaf in BN_LEAVES:
            self.take(leaf, lambda s: s == (n,), f"a BatchNorm over {n} channels ({leaf})")
