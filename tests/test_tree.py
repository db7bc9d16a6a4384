from __future__ import annotations

import pytest

from specgrove.tree import TokenTree, TreeError, parse_branching, static_tree_size


def test_derived_views():
    #        0
    #      /   \
    #     1     2
    #    / \     \
    #   3   4     5
    tree = TokenTree((10, 11, 12, 13, 14, 15), (-1, 0, 0, 1, 1, 2))
    assert tree.depths == (0, 1, 1, 2, 2, 2)
    assert tree.depth == 2
    assert tree.positions(7) == [7, 8, 8, 9, 9, 9]
    assert tree.children[1] == (3, 4)
    assert tree.path_to(4) == [0, 1, 4]
    mask = tree.ancestor_mask()
    assert mask[4] == [True, True, False, False, True, False]
    assert mask[5] == [True, False, True, False, False, True]
    assert all(mask[i][i] for i in range(len(tree)))


@pytest.mark.parametrize(
    "tokens,parents,message",
    [
        ((), (), "at least the root"),
        ((1, 2), (-1,), "parents has"),
        ((1, 2), (0, 0), "parents[0]"),
        ((1, 2, 3), (-1, 2, 0), "before its child"),
        ((1, 2, 2), (-1, 0, 0), "repeats token"),
        ((1, -2), (-1, 0), "non-negative"),
    ],
)
def test_invalid_trees_are_refused(tokens, parents, message):
    with pytest.raises(TreeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        TokenTree(tokens, parents)


def test_static_shapes():
    assert parse_branching("4,2,2,1") == (4, 2, 2, 1)
    assert static_tree_size((4, 2, 2, 1)) == 1 + 4 + 8 + 16 + 16
    assert static_tree_size(()) == 1
    with pytest.raises(TreeError):
        parse_branching("4,x")
    with pytest.raises(TreeError):
        parse_branching("2,0")
