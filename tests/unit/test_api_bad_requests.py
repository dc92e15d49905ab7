"""Bad requests to the sample API: every one gets a 4xx and a JSON {"error": message}, never a 5xx.

CORPUS holds one Case per bad request, each with an id that says what is
wrong with it; the groups with one wrong value per field are generated
from tables. The app is configured as on an api host, with an outbox
(in the test's tmp dir) and celery_kit's in-memory broker: a refused
request reaches neither.
"""

from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from sample import deployment_settings, kit_app

from taskapp import api as api_module
from taskapp.api import MAX_BODY_BYTES, MAX_INTEGER_DIGITS, MAX_JSON_DEPTH, create_api

JSON = "application/json"
VALID = {"task": "add", "args": [1, 2]}
VALID_ID = "0b6b1d6e-3f6e-4d43-9a3c-2f1f0b8f3c11"
# Deeper than any limit and than Python's recursion limit (the json
# parser's and kombu's serialiser's recursion gave a 500 before).
DEEP = 5000


@dataclass(frozen=True)
class Case:
    """One bad request, and the status it must get (None: any 4xx)."""

    id: str
    method: str = "POST"
    path: str = "/tasks"
    body: bytes = b""
    content_type: str | None = JSON
    headers: dict[str, str] = field(default_factory=dict)
    environ: dict[str, Any] = field(default_factory=dict)
    # Sent without a Content-Length, as gunicorn passes a chunked body on
    # (it sets wsgi.input_terminated; werkzeug then reads up to its limit).
    streamed: bool = False
    status: int | None = None


def raw(case_id: str, body: bytes | str, **options: Any) -> Case:
    """A POST /tasks of exactly these bytes (a str is sent as UTF-8)."""
    return Case(case_id, body=body.encode() if isinstance(body, str) else body, **options)


def post(case_id: str, value: Any, **options: Any) -> Case:
    """A POST /tasks of value as JSON (non-ASCII and lone surrogates as \\u escapes)."""
    return raw(case_id, json.dumps(value), **options)


def call(case_id: str, method: str, path: str, status: int | None = None) -> Case:
    """A request without a body."""
    return Case(case_id, method=method, path=path, content_type=None, status=status)


def nested(depth: int, inner: str = "1") -> str:
    """JSON text of depth arrays, one in the other, around inner."""
    return "[" * depth + inner + "]" * depth


def deep_object(depth: int) -> str:
    """JSON text of depth objects, one in the other."""
    return '{"a":' * depth + "1" + "}" * depth


def padded(value: Any, size: int) -> bytes:
    """value as JSON, followed by spaces up to size bytes (still valid JSON)."""
    text = json.dumps(value).encode()
    return text + b" " * (size - len(text))


MALFORMED = [
    raw("empty body", b""),
    raw("only whitespace", " \n\t "),
    raw("lone open brace", "{"),
    raw("lone close brace", "}"),
    raw("lone open bracket", "["),
    raw("trailing comma in object", '{"task": "add",}'),
    raw("trailing comma in array", '{"task": "add", "args": [1, 2,]}'),
    raw("single quotes", "{'task': 'add', 'args': [1, 2]}"),
    raw("unquoted key", '{task: "add", args: [1, 2]}'),
    raw("missing colon", '{"task" "add"}'),
    raw("missing comma between members", '{"task": "add" "args": [1, 2]}'),
    raw("missing comma between elements", '{"task": "add", "args": [1 2]}'),
    raw("two documents", '{"task": "add"} {"task": "add"}'),
    raw("garbage after the document", '{"task": "add", "args": [1, 2]} trailing'),
    raw("unterminated object", '{"task": "add", "args": [1, 2]'),
    raw("unterminated string", '{"task": "add'),
    raw("mismatched close bracket", '{"task": "add", "args": [1, 2}}'),
    raw("mismatched close brace", '{"task": "add", "args": [1, 2]]'),
    raw("invalid escape", '{"task": "a\\qdd"}'),
    raw("short unicode escape", '{"task": "\\u12"}'),
    raw("raw newline in a string", '{"task": "add\n", "args": [1, 2]}'),
    raw("raw tab in a string", '{"task": "add\t", "args": [1, 2]}'),
    raw("line comment", '// add\n{"task": "add", "args": [1, 2]}'),
    raw("block comment", '/* add */ {"task": "add", "args": [1, 2]}'),
    raw("leading zero", '{"task": "add", "args": [01, 2]}'),
    raw("leading dot", '{"task": "add", "args": [.5, 2]}'),
    raw("leading plus", '{"task": "add", "args": [+1, 2]}'),
    raw("hex number", '{"task": "add", "args": [0x1, 2]}'),
    raw("exponent without digits", '{"task": "add", "args": [1e, 2]}'),
    raw("lone minus", '{"task": "add", "args": [-, 2]}'),
    raw("undefined literal", '{"task": "add", "args": [undefined, 2]}'),
    raw("truncated literal", '{"task": "add", "args": [tru, 2]}'),
    raw("capitalised literal", '{"task": "add", "args": [1, 2], "countdown": None}'),
    raw("trailing NUL byte", b'{"task": "add", "args": [1, 2]}\x00'),
    raw("only a NUL byte", b"\x00"),
    raw("NUL byte between members", b'{"task": "add",\x00 "args": [1, 2]}'),
    raw("bare word", "add"),
    raw("unbalanced closers", "]" * 1000),
    raw("unclosed deep arrays", "[" * 40),
]

NOT_AN_OBJECT = [
    raw("body is null", "null"),
    raw("body is true", "true"),
    raw("body is false", "false"),
    raw("body is zero", "0"),
    raw("body is a negative number", "-1"),
    raw("body is a float", "1.5"),
    raw("body is a string", '"add"'),
    raw("body is an empty array", "[]"),
    raw("body is an array of a submission", '[{"task": "add", "args": [1, 2]}]'),
    raw("body is an empty object", "{}"),
]

# One wrong value of each field at a time, the rest valid.
WRONG_FIELDS: dict[str, list[Any]] = {
    "task": [
        None,
        1,
        1.5,
        True,
        [],
        {},
        ["add"],
        {"name": "add"},
        "",
        "ADD",
        " add",
        "add ",
        "taskapp.tasks.add",
        "health",  # a task of the sample app, but not one the API takes
        "celery.backend_cleanup",  # a task Celery registers
        "celery.chord_unlock",
        "rm -rf /",
    ],
    "args": [None, "1, 2", 1, True, {}, {"x": 1}],
    "kwargs": [None, "x=1", 1, True, [], [["x", 1]]],
    "countdown": [None, "5", True, False, [], {}, {"seconds": 5}, -1, -0.001, 10**9, 1e16],
    "priority": [None, "3", True, False, 1.5, 3.0, -1, 10, 256, [], {}],
    "queue": [None, 1, True, [], ["default"], {}, "", "DEFAULT", "default ", "dead-letter", "celery", "../default"],
}
FIELD_TYPES = [
    post(f"{name} is {json.dumps(value)}", {**VALID, name: value})
    for name, values in WRONG_FIELDS.items()
    for value in values
]

UNKNOWN_FIELDS = [
    post(f"unknown field {name!r}", {**VALID, name: value})
    for name, value in [
        ("eta", "tomorrow"),
        ("expires", 60),
        ("task_id", VALID_ID),
        ("headers", {}),
        ("serializer", "pickle"),
        ("exchange", "amq.direct"),
        ("routing_key", "dead-letter"),
        ("link", {"task": "poison"}),
        ("ignore_result", True),
        ("retries", 100),
        ("Task", "add"),
        ("", 1),
        ("__proto__", {}),
        ("__class__", "dict"),
    ]
]

# Each submittable task with arguments that do not fit it.
TASK_ARGUMENTS = [
    post(f"{task} with {description}", {"task": task, **fields})
    for task, description, fields in [
        ("add", "no arguments", {}),
        ("add", "one argument", {"args": [1]}),
        ("add", "three arguments", {"args": [1, 2, 3]}),
        ("add", "a string", {"args": ["1", 2]}),
        ("add", "a null", {"args": [None, 2]}),
        ("add", "an array", {"args": [[1], 2]}),
        ("add", "an object", {"args": [{"x": 1}, 2]}),
        ("add", "a boolean x", {"args": [True, 2]}),
        ("add", "a boolean y", {"args": [1, False]}),
        ("add", "a number above the limit", {"args": [1e16, 2]}),
        ("add", "a number below the negative limit", {"args": [1, -1e16]}),
        ("add", "only kwarg x", {"kwargs": {"x": 1}}),
        ("add", "an unknown kwarg", {"kwargs": {"x": 1, "y": 2, "z": 3}}),
        ("add", "x twice", {"args": [1], "kwargs": {"x": 2}}),
        ("add", "a string kwarg", {"kwargs": {"x": "1", "y": 2}}),
        ("add", "a self kwarg", {"kwargs": {"self": 1, "x": 1, "y": 2}}),
        ("add", "an empty kwarg name", {"kwargs": {"": 1, "x": 1, "y": 2}}),
        ("send_welcome_email", "no arguments", {}),
        ("send_welcome_email", "two arguments", {"args": ["a@example.com", "b@example.com"]}),
        ("send_welcome_email", "a null", {"args": [None]}),
        ("send_welcome_email", "a number", {"args": [1]}),
        ("send_welcome_email", "an array", {"args": [["a@example.com"]]}),
        ("send_welcome_email", "an object", {"args": [{"email": "a@example.com"}]}),
        ("send_welcome_email", "no at sign", {"args": ["not-an-email"]}),
        ("send_welcome_email", "no local part", {"args": ["@example.com"]}),
        ("send_welcome_email", "no domain", {"args": ["a@"]}),
        ("send_welcome_email", "a domain without a dot", {"args": ["a@example"]}),
        ("send_welcome_email", "a space", {"args": ["a b@example.com"]}),
        ("send_welcome_email", "two at signs", {"args": ["a@b@example.com"]}),
        ("send_welcome_email", "a local part over 64", {"args": ["x" * 65 + "@example.com"]}),
        ("send_welcome_email", "an address over 254", {"args": ["a@" + "b" * 300 + ".com"]}),
        ("send_welcome_email", "a trailing newline", {"args": ["a@example.com\n"]}),
        ("send_welcome_email", "a header injection", {"args": ["a@example.com\r\nBcc: b@example.com"]}),
        ("send_welcome_email", "a wrong kwarg name", {"kwargs": {"mail": "a@example.com"}}),
        ("send_welcome_email", "a number kwarg", {"kwargs": {"email": 5}}),
        ("process_task", "no arguments", {}),
        ("process_task", "a null", {"args": [None]}),
        ("process_task", "an array", {"args": [[]]}),
        ("process_task", "a string", {"args": ["text"]}),
        ("process_task", "a number", {"args": [1]}),
        ("process_task", "two objects", {"args": [{}, {}]}),
        ("process_task", "seconds as a string", {"args": [{"seconds": "5"}]}),
        ("process_task", "negative seconds", {"args": [{"seconds": -1}]}),
        ("process_task", "seconds over the maximum", {"args": [{"seconds": 61}]}),
        ("process_task", "seconds true", {"args": [{"seconds": True}]}),
        ("process_task", "seconds null", {"args": [{"seconds": None}]}),
        ("process_task", "seconds an array", {"args": [{"seconds": [1]}]}),
        ("process_task", "seconds above the number limit", {"args": [{"seconds": 1e16}]}),
        ("poison", "an argument", {"args": [1]}),
        ("poison", "a kwarg", {"kwargs": {"x": 1}}),
        ("celery_kit.health", "an argument", {"args": [1]}),
        ("celery_kit.health", "a kwarg", {"kwargs": {"worker": "w1"}}),
    ]
]

# Numbers Python's json reads but JSON has not (NaN, Infinity, overflowing
# floats), and integers too long to convert or to compare with a float.
HUGE = "9" * 400
OVER_DIGITS = "9" * 5000
NUMBERS = [
    raw("NaN literal in args", '{"task": "add", "args": [NaN, 1]}'),
    raw("Infinity literal in args", '{"task": "add", "args": [Infinity, 1]}'),
    raw("-Infinity literal in args", '{"task": "add", "args": [1, -Infinity]}'),
    raw("NaN literal as countdown", '{"task": "add", "args": [1, 2], "countdown": NaN}'),
    raw("Infinity literal as priority", '{"task": "add", "args": [1, 2], "priority": Infinity}'),
    raw("NaN literal as data.seconds", '{"task": "process_task", "args": [{"seconds": NaN}]}'),
    raw("NaN literal in free data", '{"task": "process_task", "args": [{"seconds": 0, "score": NaN}]}'),
    raw("Infinity literal in free data", '{"task": "process_task", "args": [{"score": Infinity}]}'),
    raw("1e400 overflows to infinity in free data", '{"task": "process_task", "args": [{"score": 1e400}]}'),
    raw("-1e400 overflows in free data", '{"task": "process_task", "args": [{"score": -1e400}]}'),
    raw(
        "5000-digit float overflows in free data", f'{{"task": "process_task", "args": [{{"score": {OVER_DIGITS}.0}}]}}'
    ),
    raw("1e400 overflows in args", '{"task": "add", "args": [1e400, 1]}'),
    raw("400-digit integer in args", f'{{"task": "add", "args": [{HUGE}, 1]}}'),
    raw("negative 400-digit integer in args", f'{{"task": "add", "args": [1, -{HUGE}]}}'),
    raw("400-digit integer as countdown", f'{{"task": "add", "args": [1, 2], "countdown": {HUGE}}}'),
    raw("400-digit integer as priority", f'{{"task": "add", "args": [1, 2], "priority": {HUGE}}}'),
    raw("400-digit integer as data.seconds", f'{{"task": "process_task", "args": [{{"seconds": {HUGE}}}]}}'),
    raw("5000-digit integer in args", f'{{"task": "add", "args": [{OVER_DIGITS}, 1]}}'),
    raw("5000-digit integer in free data", f'{{"task": "process_task", "args": [{{"n": {OVER_DIGITS}}}]}}'),
    raw("5000-digit integer in an unknown field", f'{{"task": "add", "args": [1, 2], "n": {OVER_DIGITS}}}'),
]

# The body, args or kwargs nested deeper than MAX_JSON_DEPTH.
SUBMIT_PREFIX = '{"task": "process_task", "args": [{"seconds": 0, "deep": '
DEPTH = [
    raw("60000 open brackets", "[" * 60_000),
    raw("30000 balanced brackets", nested(30_000)),
    raw("deep object body", deep_object(DEEP)),
    raw("deep unclosed objects", '{"a":' * 12_000),
    raw("args nested 5000 deep", f'{{"task": "add", "args": [{nested(DEEP)}, 1]}}'),
    raw("kwargs nested 5000 deep", f'{{"task": "add", "kwargs": {{"x": {deep_object(DEEP)}, "y": 1}}}}'),
    raw("free data nested 5000 deep", SUBMIT_PREFIX + nested(DEEP) + "}]}"),
    raw("free data of objects nested 5000 deep", SUBMIT_PREFIX + deep_object(DEEP) + "}]}"),
    raw("free data nested 990 deep", SUBMIT_PREFIX + nested(990) + "}]}"),
    raw("free data nested 500 deep", SUBMIT_PREFIX + nested(500) + "}]}"),
    raw("alternating arrays and objects", SUBMIT_PREFIX + '[{"a":' * 2500 + "1" + "}]" * 2500 + "}]}"),
    raw("one level over the limit", SUBMIT_PREFIX + nested(MAX_JSON_DEPTH - 2) + "}]}"),
    raw("a bare array one level over the limit", nested(MAX_JSON_DEPTH + 1)),
    raw("deep task name", f'{{"task": {nested(DEEP, inner=chr(34) + "add" + chr(34))}}}'),
    raw("deep unknown field", f'{{"task": "add", "args": [1, 2], "eta": {nested(DEEP)}}}'),
    # Brackets in strings do not count, but a string does not hide what follows it.
    raw("deep after a string of brackets", f'{{"task": "add", "args": ["[[[[{{{{", {nested(DEEP)}]}}'),
    raw("deep after an escaped quote", f'{{"task": "add", "args": ["\\"", {nested(DEEP)}]}}'),
    raw("deep after an escaped backslash", f'{{"task": "add", "args": ["\\\\", {nested(DEEP)}]}}'),
]

UNICODE = [
    raw("invalid UTF-8 byte", b'{"task": "add\xff", "args": [1, 2]}'),
    raw("Latin-1 byte", b'{"task": "process_task", "args": [{"name": "caf\xe9"}]}'),
    raw("overlong slash", b'{"task": "process_task", "args": [{"path": "\xc0\xaf"}]}'),
    raw("overlong NUL", b'{"task": "process_task", "args": [{"s": "\xc0\x80"}]}'),
    raw("truncated multibyte sequence", b'{"task": "process_task", "args": [{"s": "\xe2\x82"}]}'),
    raw("continuation byte alone", b'{"task": "process_task", "args": [{"s": "\x80"}]}'),
    raw("CESU-8 encoded surrogate", b'{"task": "process_task", "args": [{"s": "\xed\xa0\x80"}]}'),
    raw("code point above U+10FFFF", b'{"task": "process_task", "args": [{"s": "\xf4\x90\x80\x80"}]}'),
    raw("UTF-8 byte order mark", b"\xef\xbb\xbf" + json.dumps(VALID).encode()),
    raw("UTF-16 with a byte order mark", json.dumps(VALID).encode("utf-16")),
    raw("UTF-16 big-endian", json.dumps(VALID).encode("utf-16-be")),
    raw("UTF-32", json.dumps(VALID).encode("utf-32")),
    post("lone high surrogate in free data", {"task": "process_task", "args": [{"s": "\ud800"}]}),
    post("lone low surrogate in free data", {"task": "process_task", "args": [{"s": "\udc00"}]}),
    post("reversed surrogate pair", {"task": "process_task", "args": [{"s": "\udc00\ud800"}]}),
    post("high surrogate at a string's end", {"task": "process_task", "args": [{"s": "emoji \ud83d"}]}),
    post("lone surrogate in a key", {"task": "process_task", "args": [{"\ud800": 1}]}),
    post("lone surrogate in the task name", {"task": "add\ud800", "args": [1, 2]}),
    post("lone surrogate in a field name", {**VALID, "\udfff": 1}),
    post("lone surrogate in an email", {"task": "send_welcome_email", "args": ["a\ud800@example.com"]}),
    post("NUL in free data", {"task": "process_task", "args": [{"s": "a\u0000b"}]}),
    post("NUL in a free data key", {"task": "process_task", "args": [{"a\u0000": 1}]}),
    post("NUL in the task name", {"task": "add\u0000", "args": [1, 2]}),
    post("NUL in an email", {"task": "send_welcome_email", "args": ["a\u0000@example.com"]}),
    post("NUL in the queue", {**VALID, "queue": "default\u0000"}),
    post("right-to-left override in an email", {"task": "send_welcome_email", "args": ["\u202eadmin@example.com"]}),
    post("zero-width space in an email", {"task": "send_welcome_email", "args": ["ad\u200bmin@example.com"]}),
    post("zero-width joiner in the task name", {"task": "a\u200ddd", "args": [1, 2]}),
    post("right-to-left mark in the queue", {**VALID, "queue": "default\u200f"}),
    post("byte order mark in the task name", {"task": "\ufeffadd", "args": [1, 2]}),
    post("fullwidth task name", {"task": "\uff41\uff44\uff44", "args": [1, 2]}),
    post("Cyrillic a in the task name", {"task": "\u0430dd", "args": [1, 2]}),
    post("combining accent in the task name", {"task": "add\u0301", "args": [1, 2]}),
    post("line separator in an email", {"task": "send_welcome_email", "args": ["a\u2028@example.com"]}),
    post("no-break space in an email", {"task": "send_welcome_email", "args": ["a\u00a0b@example.com"]}),
    raw(
        "raw right-to-left override in an email",
        '{"task": "send_welcome_email", "args": ["\u202egnp.exe@example.com"]}'.encode(),
    ),
]

# The same key twice: json keeps the last, a proxy or log reader may take the first.
DUPLICATE_KEYS = [
    raw("task twice, same value", '{"task": "add", "task": "add", "args": [1, 2]}'),
    raw("task twice, different values", '{"task": "poison", "task": "add", "args": [1, 2]}'),
    raw("args twice", '{"task": "add", "args": [1, 2], "args": [3, 4]}'),
    raw("a kwarg twice", '{"task": "add", "kwargs": {"x": 1, "x": 2, "y": 3}}'),
    raw("data.seconds twice", '{"task": "process_task", "args": [{"seconds": 60, "seconds": 1}]}'),
    raw("task twice, once escaped", '{"task": "add", "t\\u0061sk": "poison", "args": [1, 2]}'),
]

GZIPPED = gzip.compress(json.dumps(VALID).encode())
HEADERS = [
    post("no content type", VALID, content_type=None),
    post("text/plain", VALID, content_type="text/plain"),
    post("text/json", VALID, content_type="text/json"),
    post("application/xml", VALID, content_type="application/xml"),
    post("application/javascript", VALID, content_type="application/javascript"),
    post("application/jsonx", VALID, content_type="application/jsonx"),
    post("bare json", VALID, content_type="json"),
    raw("a form", "task=add&args=1&args=2", content_type="application/x-www-form-urlencoded"),
    raw(
        "multipart",
        '--b\r\nContent-Disposition: form-data; name="task"\r\n\r\nadd\r\n--b--\r\n',
        content_type="multipart/form-data; boundary=b",
    ),
    post("charset latin-1", VALID, content_type="application/json; charset=latin-1"),
    raw("charset utf-16", json.dumps(VALID).encode("utf-16"), content_type="application/json; charset=utf-16"),
    post("charset utf-32", VALID, content_type="application/json; charset=utf-32"),
    post("charset ebcdic", VALID, content_type="application/json; charset=cp500"),
    raw("gzip content encoding", GZIPPED, headers={"Content-Encoding": "gzip"}),
    post("deflate content encoding on a plain body", VALID, headers={"Content-Encoding": "deflate"}),
    post("Content-Length not a number", VALID, environ={"CONTENT_LENGTH": "abc"}),
    post("Content-Length negative", VALID, environ={"CONTENT_LENGTH": "-5"}),
    post("Content-Length in exponent form", VALID, environ={"CONTENT_LENGTH": "1e3"}),
    post("Content-Length zero", VALID, environ={"CONTENT_LENGTH": "0"}),
    post("Content-Length longer than the body", VALID, environ={"CONTENT_LENGTH": "100"}),
    post("Content-Length cutting the JSON short", VALID, environ={"CONTENT_LENGTH": "10"}),
    # Without a Content-Length and without a server that ends the stream
    # (wsgi.input_terminated), werkzeug reads nothing: an empty body.
    post("chunked without a server that ends the stream", VALID, headers={"Transfer-Encoding": "chunked"}),
]

OVERSIZED = [
    post("100 KB string", {"task": "process_task", "args": [{"blob": "x" * 100_000}]}, status=413),
    raw("one byte over the limit", padded(VALID, MAX_BODY_BYTES + 1), status=413),
    raw("1 MB of brackets", "[" * 1_000_000, status=413),
    raw(
        "Content-Length over the limit",
        json.dumps(VALID),
        environ={"CONTENT_LENGTH": str(MAX_BODY_BYTES + 1)},
        status=413,
    ),
    raw("Content-Length of 20 digits", json.dumps(VALID), environ={"CONTENT_LENGTH": "9" * 20}, status=413),
    raw("streamed, one byte over the limit", padded(VALID, MAX_BODY_BYTES + 1), streamed=True, status=413),
    raw("streamed, valid JSON padded to 100 KB", padded(VALID, 100_000), streamed=True, status=413),
    raw("streamed 1 MB", b"[" * 1_000_000, streamed=True, status=413),
    raw("oversized and not JSON", b"x" * 100_000, content_type="text/plain"),
]

LONG = 60_000
LONG_STRINGS = [
    post("task name of 60000 characters", {"task": "a" * LONG, "args": [1, 2]}),
    post("queue name of 60000 characters", {**VALID, "queue": "q" * LONG}),
    post("email of 60000 characters", {"task": "send_welcome_email", "args": ["a" * LONG + "@example.com"]}),
    post("field name of 60000 characters", {**VALID, "f" * LONG: 1}),
    post("kwarg name of 60000 characters", {"task": "add", "kwargs": {"k" * LONG: 1}}),
    post("countdown a 60000-character string", {**VALID, "countdown": "9" * LONG}),
    post("data.seconds a 60000-character string", {"task": "process_task", "args": [{"seconds": "1" * LONG}]}),
    post("5000 unknown fields", {**VALID, **{f"f{index}": 0 for index in range(5000)}}),
    post("3000 kwargs", {"task": "add", "kwargs": {f"k{index}": 0 for index in range(3000)}}),
    post("20000 args", {"task": "add", "args": [0] * 20_000}),
]

METHODS = [
    call(f"{method} {path}", method, path, status=405)
    for path, methods in [
        ("/tasks", ["GET", "PUT", "PATCH", "DELETE", "TRACE", "PROPFIND", "BREW"]),
        (f"/tasks/{VALID_ID}", ["POST", "PUT", "PATCH", "DELETE"]),
        ("/healthz", ["POST", "PUT", "PATCH", "DELETE"]),
    ]
    for method in methods
]

PATHS = [
    call("root", "GET", "/", status=404),
    call("unknown path", "GET", "/nowhere", status=404),
    call("/tasks with a trailing slash", "GET", "/tasks/", status=404),
    call("POST to /tasks with a trailing slash", "POST", "/tasks/", status=404),
    call("POST to /task", "POST", "/task", status=404),
    call("a task id with a slash", "GET", "/tasks/a/b", status=404),
    call("a task id with a trailing slash", "GET", f"/tasks/{VALID_ID}/", status=404),
    call("upper case path", "GET", "/TASKS", status=404),
    call("/healthz with a trailing slash", "GET", "/healthz/", status=404),
    call("below /healthz", "GET", "/healthz/deep", status=404),
    call("a dotfile", "GET", "/.env", status=404),
    call("an admin page", "GET", "/admin", status=404),
    call("a task id of 156 characters", "GET", "/tasks/" + "x" * 156, status=400),
    call("a task id of 10000 characters", "GET", "/tasks/" + "x" * 10_000, status=400),
    call("a task id with a trailing newline", "GET", "/tasks/abc%0A", status=400),
    call("a task id with a trailing carriage return", "GET", "/tasks/abc%0D", status=400),
    call("a task id with a NUL", "GET", "/tasks/a%00b", status=400),
    call("a task id of invalid UTF-8", "GET", "/tasks/%ff", status=400),
    call("a task id with a space", "GET", "/tasks/a%20b", status=400),
    call("a task id with markup", "GET", "/tasks/%3Cscript%3E", status=400),
    call("a task id with a semicolon", "GET", "/tasks/id%3Bdrop", status=400),
    call("a task id with a star", "GET", "/tasks/*", status=400),
    call("a task id with non-ASCII", "GET", "/tasks/caf%C3%A9", status=400),
    call("a task id with a right-to-left override", "GET", "/tasks/%E2%80%AEid", status=400),
    call("a task id with a lone surrogate's bytes", "GET", "/tasks/%ED%A0%80", status=400),
    call("an encoded path traversal", "GET", "/tasks/..%2F..%2Fetc%2Fpasswd"),
]

# The API reads nothing from query strings: they neither fix nor break a request.
QUERIES = [
    post("task in the query, none in the body", {}, path="/tasks?task=add&args=1&args=2"),
    Case("task in the query, no body", path="/tasks?task=add", content_type=None),
    post("content type in the query", VALID, path="/tasks?content_type=application/json", content_type="text/plain"),
    raw("invalid percent-encoding in the query", "{", path="/tasks?%ff=%00&%zz"),
    raw("a 10000-character query", "[" * 60_000, path="/tasks?q=" + "x" * 10_000),
    call("a valid id in the query of a bad one", "GET", f"/tasks/bad!id?id={VALID_ID}", status=400),
    call("an id in the query of /tasks/", "GET", f"/tasks/?id={VALID_ID}", status=404),
    call("a redirect in the query of an unknown path", "GET", "/nowhere?next=http://example.com", status=404),
    call("a newline id with a query", "GET", "/tasks/abc%0A?x=1", status=400),
    call("POST /healthz with a query", "POST", "/healthz?check=1", status=405),
]

CORPUS = [
    *MALFORMED,
    *NOT_AN_OBJECT,
    *FIELD_TYPES,
    *UNKNOWN_FIELDS,
    *TASK_ARGUMENTS,
    *NUMBERS,
    *DEPTH,
    *UNICODE,
    *DUPLICATE_KEYS,
    *HEADERS,
    *OVERSIZED,
    *LONG_STRINGS,
    *METHODS,
    *PATHS,
    *QUERIES,
]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    path = tmp_path_factory.mktemp("outbox") / "outbox.sqlite3"
    return create_api(kit_app(deployment_settings(outbox={"path": str(path)}))).test_client()


def send(client, case: Case):
    """The test client's answer to case."""
    options: dict[str, Any] = {"content_type": case.content_type, "headers": case.headers}
    if case.streamed:
        options["input_stream"] = io.BytesIO(case.body)
        options["headers"] = {"Transfer-Encoding": "chunked", **case.headers}
        options["environ_overrides"] = {"wsgi.input_terminated": True, **case.environ}
    else:
        options["data"] = case.body
        options["environ_overrides"] = case.environ
    return client.open(case.path, method=case.method, **options)


def test_the_corpus_has_at_least_200_cases_with_distinct_ids():
    assert len(CORPUS) >= 200
    assert len({case.id for case in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("case", CORPUS, ids=[case.id for case in CORPUS])
def test_a_bad_request_gets_a_4xx_with_a_json_error(client, case):
    reply = send(client, case)
    assert 400 <= reply.status_code < 500, (reply.status_code, reply.get_data()[:300])
    if case.status is not None:
        assert reply.status_code == case.status
    assert reply.mimetype == JSON
    error = reply.get_json()["error"]
    assert isinstance(error, str)
    assert error.strip()
    # Bounded, whatever the input echoed: no 60 KB message, no traceback.
    assert len(error) <= 1000
    assert "Traceback" not in error


def test_a_405_names_the_allowed_methods(client):
    reply = client.delete("/tasks")
    assert reply.status_code == 405
    assert "POST" in reply.headers["Allow"].split(", ")
    assert "allowed: OPTIONS, POST" in reply.json["error"]


BY_ID = {case.id: case for case in CORPUS}


@pytest.mark.parametrize(
    ("case_id", "message"),
    [
        ("60000 open brackets", f"nested deeper than {MAX_JSON_DEPTH} levels"),
        ("NaN literal in free data", "NaN is not a JSON number"),
        ("1e400 overflows in args", "must be finite"),
        ("400-digit integer in args", "x must be a finite number"),
        ("5000-digit integer in args", f"more than {MAX_INTEGER_DIGITS} digits"),
        ("invalid UTF-8 byte", "not UTF-8"),
        ("UTF-8 byte order mark", "byte order mark"),
        ("lone high surrogate in free data", "lone surrogate"),
        ("NUL in free data", "NUL"),
        ("task twice, different values", "key task appears twice"),
        ("charset latin-1", "charset=latin-1"),
        ("gzip content encoding", "Content-Encoding"),
        ("Content-Length not a number", "Content-Length must be a number"),
        ("Content-Length longer than the body", "ended before its Content-Length"),
        ("streamed, one byte over the limit", f"larger than {MAX_BODY_BYTES} bytes"),
        ("field name of 60000 characters", "unknown fields: " + "f" * 40 + "..."),
        ("5000 unknown fields", "and 4995 more"),
        ("a task id with a trailing newline", "not a task id"),
        ("right-to-left override in an email", "invisible characters"),
        ("BREW /tasks", "allowed: OPTIONS, POST"),
        ("unknown path", "no such path: /nowhere"),
    ],
)
def test_the_error_says_what_is_wrong(client, case_id, message):
    assert message in send(client, BY_ID[case_id]).json["error"]


# Valid input next to the limits: accepted as before.


def _accepted(client, case: Case) -> bool:
    reply = send(client, case)
    return reply.status_code == 202 and len(reply.json["id"]) == 36


def test_a_body_at_the_depth_limit_is_accepted(client):
    assert _accepted(client, raw("depth limit", SUBMIT_PREFIX + nested(MAX_JSON_DEPTH - 3) + "}]}"))


def test_brackets_and_escapes_in_strings_do_not_count_as_depth(client):
    text = "[" * 100 + '\\"{{{' + "\\\\"
    assert _accepted(client, post("brackets in a string", {"task": "process_task", "args": [{"note": text}]}))


def test_unicode_beyond_ascii_is_accepted(client):
    # An emoji (escaped: a surrogate pair), right-to-left text and CJK in free data.
    value = {"emoji": "\U0001f600", "hebrew": "\u05e9\u05dc\u05d5\u05dd", "cjk": "\u4e2d\u6587"}
    assert _accepted(client, post("escaped", {"task": "process_task", "args": [value]}))
    assert _accepted(
        client, raw("raw UTF-8", json.dumps({"task": "process_task", "args": [value]}, ensure_ascii=False))
    )


def test_an_internationalised_email_is_accepted(client):
    for email in ("jos\u00e9@example.com", "\u7528\u6237@\u4f8b\u5b50.\u5e7f\u544a"):
        assert _accepted(client, post(email, {"task": "send_welcome_email", "args": [email]}))


def test_an_explicit_utf8_charset_is_accepted(client):
    for charset in ("utf-8", "UTF-8", "utf8"):
        assert _accepted(client, post(charset, VALID, content_type=f"application/json; charset={charset}"))


@pytest.mark.parametrize("streamed", [False, True], ids=["with a Content-Length", "streamed"])
def test_a_body_of_exactly_the_limit_is_accepted(client, streamed):
    assert _accepted(client, raw("at the limit", padded(VALID, MAX_BODY_BYTES), streamed=streamed))


def test_large_numbers_within_the_limits_are_accepted(client):
    # 4300 digits is Python's own limit of int(); free data may hold such numbers.
    body = f'{{"task": "process_task", "args": [{{"seconds": 1e-300, "n": {"9" * 4300}}}]}}'
    assert _accepted(client, raw("big integer", body))


def test_an_unexpected_error_gets_a_json_500_without_details(client, monkeypatch):
    def broken(*args: Any) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(api_module, "validate_submission", broken)
    reply = client.post("/tasks", json=VALID)
    assert reply.status_code == 500
    assert reply.json == {"error": "internal error; it is logged on the server"}
