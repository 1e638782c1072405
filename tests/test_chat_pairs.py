"""The chat fine-tune's instruction pairs (scripts/chat_pairs.py): answers with a one-line
docstring, fresh names that rename the function and its own calls only, checked with ast; fresh
names of every style, and copy rows (scripts/chat_data.py) labelled on the defined names only."""
import ast
import random
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from chat_pairs import NamePool, conversation, functions_of, rename_in  # noqa: E402

SOURCE = '''
class Tree:
    def get_depth(self, node):
        """Return the depth of "node" in C:\\\\tree.

        A longer second paragraph
        that the answer leaves out.
        """
        if node is None:
            return 0
        return 1 + self.get_depth(node.parent) + self.cache.get_depth(node)


def read_lines(path, keep_blank=False):
    """Read a file's lines into a list."""
    with open(path) as f:
        return [line for line in f if keep_blank or line.strip()]
'''


def test_answer_docstring_is_the_first_sentence_on_one_line(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(SOURCE)
    depth, read = functions_of(f)
    assert depth.sentence == 'Return the depth of "node" in C:\\tree'
    tree = ast.parse(depth.source)
    assert ast.get_docstring(tree.body[0]) == depth.sentence + "."  # the same words, escaped as needed
    assert depth.source.splitlines()[1] == '    """Return the depth of \\"node\\" in C:\\\\tree."""'
    assert "second paragraph" not in depth.source and "second paragraph" in depth.full_source
    assert ast.get_docstring(ast.parse(depth.bare_source).body[0]) is None
    assert read.source == SOURCE.split("\n\n\n")[1].strip()  # a one-line docstring stays as it is


def test_rename_changes_the_def_and_its_own_calls_only():
    src = "def get(self, k):\n    return self.get(k) or cls.get(k) or get(k) or d.get(k) or get_all(k)"
    out = rename_in(src, "get", "fetch_item")
    assert out == ("def fetch_item(self, k):\n    return self.fetch_item(k) or cls.fetch_item(k) or fetch_item(k)"
                   " or d.get(k) or get_all(k)")


def test_fresh_names_are_copied_into_request_and_answer(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(SOURCE)
    fns = functions_of(f) * 3
    pool = NamePool(verbs=["make", "check"], nouns=["table", "entry", "socket"])
    rng = random.Random(0)
    convs = [conversation(fn, rng, follow_up_fraction=0.0, unnamed_fraction=0.0, pool=pool, rename_fraction=1.0)
             for fn in fns for _ in range(4)]
    for user, answer in convs:
        tree = ast.parse(answer["content"])
        name = tree.body[0].name
        assert name.split("_")[0] in pool.verbs and set(name.split("_")[1:]) <= set(pool.nouns)
        assert name in user["content"] and answer["content"].startswith(f"def {name}(")
        assert "get_depth" not in answer["content"] or "cache.get_depth" in answer["content"]
    assert len({a["content"].split("(")[0] for _, a in convs}) > 2  # drawn anew each time


def test_varied_fresh_names_have_every_style_and_are_identifiers():
    pool = NamePool(verbs=["make", "check"], nouns=["table", "entry", "socket"], style="varied")
    rng = random.Random(0)
    names = [pool.fresh(rng, "make_table") for _ in range(800)]
    assert all(n.isidentifier() and n != "make_table" for n in names)
    snake = [n for n in names if n.split("_")[0] in pool.verbs and set(n.split("_")[1:]) <= set(pool.nouns)]
    camel = [n for n in names if any(c.isupper() for c in n)]
    private = [n for n in names if n.startswith("_")]
    invented = [n for n in names if not any(w in n.lower() for w in pool.verbs + pool.nouns)]
    assert 0.4 < len(snake) / len(names) < 0.6  # half as the snake style, the rest spread over the others
    assert all(len(x) > 40 for x in (camel, private, invented))
    for bad in (lambda: NamePool.of([], style="kebab"), lambda: NamePool(["a"], ["b"], style="Varied")):
        with pytest.raises(ValueError, match="name style"):
            bad()


def test_copy_rows_label_only_the_defined_names_in_every_listing_form():
    from tokenizers import Tokenizer
    from chat_data import IGNORE, copy_rows
    bpe = Tokenizer.from_file(str(ROOT / "mpt_lite" / "default_model" / "tokenizer.json"))
    pool = NamePool(verbs=["make", "check"], nouns=["table", "entry", "socket"], style="varied")
    rows = copy_rows(bpe, pool, 256, 0, seed=1)
    forms = set()
    for _ in range(12):
        ids, labels, _ = next(rows)
        assert len(ids) == len(labels) == 256
        text = bpe.decode(ids)
        forms.update(f for f, mark in (("backticks", "`"), ("quotes", "__all__"), ("plain", "# ")) if mark in text)
        labelled = bpe.decode([t for t in labels if t != IGNORE])
        listed = re.findall(r"def (\w+)\(", text)
        assert listed and labelled.split() == listed  # the names of the def lines, nothing else
    assert forms == {"backticks", "quotes", "plain"}
