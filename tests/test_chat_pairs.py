"""The chat fine-tune's instruction pairs (scripts/chat_pairs.py): answers with a one-line
docstring, fresh names that rename the function and its own calls only, checked with ast."""
import ast
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

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
