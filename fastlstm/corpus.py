"""The built-in corpus: text taken at run time from the running Python's own standard
library, so the demo and the command line need no download and fastlstm ships no data.

The text is the docstrings (module, public class and public function docstrings, each
once) of about a hundred standard-library modules and packages, read from their source
files with ``ast`` (nothing is imported): about 950,000 characters of English prose and
code examples over about 100 distinct characters on CPython 3.11. It varies a little
between Python versions.
"""
import ast
import os
import sysconfig

# Modules and packages whose docstrings make up the corpus, in this order.
_MODULES = (
    "json", "textwrap", "collections", "functools", "itertools", "argparse", "string",
    "pathlib", "random", "statistics", "os", "re", "subprocess", "shutil", "typing",
    "inspect", "datetime", "fractions", "heapq", "bisect", "csv", "logging", "unittest",
    "email", "http", "urllib", "zipfile", "tarfile", "tempfile", "threading", "asyncio",
    "dataclasses", "enum", "contextlib", "difflib", "pprint", "calendar", "socket", "ssl",
    "sqlite3", "xml", "configparser", "gzip", "pickle", "copy", "abc", "numbers",
    "operator", "base64", "hashlib", "hmac", "secrets", "uuid", "glob", "fnmatch",
    "locale", "gettext", "codecs", "io", "struct", "weakref", "types", "ast", "dis",
    "tokenize", "traceback", "warnings", "doctest", "pdb", "timeit", "platform", "shlex",
    "optparse", "queue", "sched", "selectors", "signal", "mimetypes", "smtplib", "imaplib",
    "ftplib", "html", "mailbox", "ipaddress", "graphlib", "zoneinfo", "concurrent",
    "multiprocessing", "importlib", "pkgutil", "runpy", "sysconfig", "venv", "trace",
    "cmd", "code", "pydoc", "reprlib", "filecmp", "fileinput", "decimal", "_pydecimal",
    "xmlrpc", "wsgiref",
)

_cache = None


def _source_files(root, name):
    path = os.path.join(root, name)
    if os.path.isdir(path):
        for folder, subdirs, files in os.walk(path):
            subdirs.sort()
            for f in sorted(files):
                if f.endswith(".py"):
                    yield os.path.join(folder, f)
    elif os.path.isfile(path + ".py"):
        yield path + ".py"


def _docstrings(filename):
    try:
        with open(filename, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Module) or (
                isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                and not node.name.startswith("_")):
            doc = ast.get_docstring(node)
            if doc:
                yield doc


def _imported_docstrings():
    # For an installation without standard-library sources (only .pyc files).
    import importlib
    for name in _MODULES:
        try:
            mod = importlib.import_module(name)
        except Exception:        # noqa: BLE001 - any module that fails to import is skipped
            continue
        yield mod.__doc__ or ""
        for attr in sorted(vars(mod)):
            obj = getattr(mod, attr, None)
            doc = getattr(obj, "__doc__", None)
            if not attr.startswith("_") and callable(obj) and isinstance(doc, str):
                yield doc


def stdlib_text():
    """The corpus as one string (docstrings separated by blank lines). Computed once per
    process (about two seconds), then cached."""
    global _cache
    if _cache is None:
        root = sysconfig.get_paths()["stdlib"]
        seen, parts = set(), []
        for name in _MODULES:
            for filename in _source_files(root, name):
                for doc in _docstrings(filename):
                    if doc not in seen:
                        seen.add(doc)
                        parts.append(doc)
        if sum(map(len, parts)) < 100_000:
            parts = list(dict.fromkeys(_imported_docstrings()))
        _cache = "\n\n".join(parts)
    return _cache
