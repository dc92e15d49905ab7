"""Load and bookkeeping of the sample app for the fault tests and benchmarks.

Run on an app host (api or worker) with the app's Python and environment,
where the kit is installed: python -m celery_kit.loadgen ACTION ...

  load.py submit SPEC IDS         post every submission of SPEC (JSON list) to
                                  the API on 127.0.0.1:8000; append the ids
                                  to IDS
  load.py steady IDS STOP RATE [BODY... | @FILE]
                                  post RATE times a second until the file STOP
                                  exists, cycling through the JSON bodies
                                  given (or the JSON list in FILE; default:
                                  add); append ids, count refusals by status;
                                  one JSON line per submission in IDS.records
                                  (when it was sent, its status, how long it
                                  waited for the answer, the id if accepted)
  load.py finished IDS            when each succeeded id finished (date_done
                                  of its SUCCESS result, seconds since the epoch)
  load.py check IDS               which ids have not run (no celery-kit:done:<id>
                                  in Redis db 2), how many ran twice (copies
                                  the app skipped, celery-kit:duplicates), and
                                  their states in the result backend
  load.py order IDS               the finished ids, in the order they finished
                                  (date_done of their results)

Each prints one JSON summary line. CELERY_KIT_LOADGEN_API (an https:// URL,
http:// on a deployment without TLS) posts to another host's API instead of
127.0.0.1:8000. Over HTTPS the API's certificate must be signed by the
deployment's CA (tls_ca of the deployment's settings) and name the address
posted to. Behind the kit's gate, every submission carries the kit's own
token, read from the root-only header file the celery_app role writes
(CELERY_KIT_LOADGEN_AUTH names another), never from a command line.
"""

from __future__ import annotations

import datetime
import itertools
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections import Counter

from celery_kit import redisurl

# The API this host posts to: its own, unless CELERY_KIT_LOADGEN_API names
# another (the chaos suite restarts the api host, so it then posts from a
# worker host to the api host's address).
DEFAULT_BODY = {"task": "add", "args": [1, 1]}


def _deployment() -> dict:
    with open(os.environ["CELERY_KIT_DEPLOYMENT"], encoding="utf-8") as config_file:
        return json.load(config_file)


def _api() -> tuple[str, ssl.SSLContext | None]:
    """The API's URL and, over HTTPS, a context trusting the deployment's CA only."""
    tls_ca = _deployment().get("tls_ca") if os.environ.get("CELERY_KIT_DEPLOYMENT") else None
    scheme = "https" if tls_ca else "http"
    url = os.environ.get("CELERY_KIT_LOADGEN_API", f"{scheme}://127.0.0.1:8000/tasks")
    if not url.startswith(scheme + "://"):
        raise SystemExit(f"CELERY_KIT_LOADGEN_API must be an {scheme}:// URL on this deployment, not {url}")
    return url, ssl.create_default_context(cafile=tls_ca) if tls_ca else None


API, API_CONTEXT = _api()
AUTH_FILE = os.environ.get("CELERY_KIT_LOADGEN_AUTH", "/etc/celery-app/kit-api-auth.header")


def _auth_headers() -> dict[str, str]:
    """The kit's token as the gate wants it ({} where the deployment has none)."""
    try:
        with open(AUTH_FILE, encoding="utf-8") as header_file:
            name, _, value = header_file.read().strip().partition(": ")
    except FileNotFoundError:
        return {}
    return {name: value} if name and value else {}


AUTH_HEADERS = _auth_headers()


def post(body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(  # noqa: S310 (an http(s) URL, checked above)
        API,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **AUTH_HEADERS},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=20, context=API_CONTEXT) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, {"error": error.read().decode(errors="replace")}
    except OSError as error:
        return 0, {"error": str(error)}


def submit(spec_path: str, ids_path: str) -> dict:
    with open(spec_path, encoding="utf-8") as spec_file:
        spec = json.load(spec_file)
    failures: dict[str, int] = {}
    with open(ids_path, "a", encoding="utf-8") as ids:
        for body in spec:
            status, reply = post(body)
            if status == 202:
                ids.write(reply["id"] + "\n")
            else:
                failures[str(status)] = failures.get(str(status), 0) + 1
    return {"submitted": len(spec), "failures": failures}


def steady(ids_path: str, stop_path: str, rate: float, bodies: list[dict]) -> dict:
    accepted = 0
    failures: dict[str, int] = {}
    errors: list[str] = []
    started = time.monotonic()
    with open(ids_path, "a", encoding="utf-8") as ids, open(f"{ids_path}.records", "a", encoding="utf-8") as records:
        for body in itertools.cycle(bodies or [DEFAULT_BODY]):
            if os.path.exists(stop_path):
                break
            sent, sent_clock = time.time(), time.monotonic()
            status, reply = post(body)
            record = {"sent": round(sent, 3), "status": status, "wait": round(time.monotonic() - sent_clock, 3)}
            if 200 <= status < 300:
                record["id"] = reply["id"]
            records.write(json.dumps(record) + "\n")
            records.flush()
            if 200 <= status < 300:
                accepted += 1
                ids.write(reply["id"] + "\n")
                ids.flush()
            else:
                failures[str(status)] = failures.get(str(status), 0) + 1
                if len(errors) < 5:
                    errors.append(f"{status}: {reply.get('error', '')[:200]}")
            time.sleep(1 / rate)
    return {
        "accepted": accepted,
        "refused": sum(failures.values()),
        "failures": failures,
        "errors": errors,
        "seconds": round(time.monotonic() - started, 1),
    }


def check(ids_path: str) -> dict:
    config = _deployment()
    locks = redisurl.connect(config["locks_url"])
    results = redisurl.connect(config["result_backend"])
    with open(ids_path, encoding="utf-8") as ids_file:
        ids = [line.strip() for line in ids_file if line.strip()]
    missing: list[str] = []
    twice = 0
    states: Counter[str] = Counter()
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        with locks.pipeline(transaction=False) as pipe:
            for task_id in chunk:
                pipe.exists(f"celery-kit:done:{task_id}")
            missing += [task_id for task_id, done in zip(chunk, pipe.execute(), strict=True) if not done]
        twice += sum(int(count or 0) for count in locks.hmget("celery-kit:duplicates", chunk))
        for meta in results.mget([f"celery-task-meta-{task_id}" for task_id in chunk]):
            states[json.loads(meta)["status"] if meta else "NO RESULT"] += 1
    return {
        "submitted": len(ids),
        "unique": len(set(ids)),
        "missing": len(missing),
        "missing_sample": missing[:10],
        "duplicate_executions_skipped": twice,
        "states": dict(states),
    }


def order(ids_path: str) -> dict:
    config = _deployment()
    results = redisurl.connect(config["result_backend"])
    with open(ids_path, encoding="utf-8") as ids_file:
        ids = [line.strip() for line in ids_file if line.strip()]
    finished = []
    for task_id, meta in zip(ids, results.mget([f"celery-task-meta-{task_id}" for task_id in ids]), strict=True):
        if meta and json.loads(meta).get("date_done"):
            finished.append((json.loads(meta)["date_done"], task_id))
    return {"finished": [task_id for _, task_id in sorted(finished)], "unfinished": len(ids) - len(finished)}


def finished(ids_path: str) -> dict:
    """When each succeeded id finished, from its result's date_done (UTC), in seconds since the epoch."""
    config = _deployment()
    results = redisurl.connect(config["result_backend"])
    with open(ids_path, encoding="utf-8") as ids_file:
        ids = list(dict.fromkeys(line.strip() for line in ids_file if line.strip()))
    times: dict[str, float] = {}
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        for task_id, meta in zip(chunk, results.mget([f"celery-task-meta-{i}" for i in chunk]), strict=True):
            result = json.loads(meta) if meta else {}
            done = result.get("date_done") if result.get("status") == "SUCCESS" else None
            if done:
                moment = datetime.datetime.fromisoformat(done)
                if moment.tzinfo is None:
                    moment = moment.replace(tzinfo=datetime.UTC)
                times[task_id] = round(moment.timestamp(), 3)
    return {"finished": times, "unfinished": len(ids) - len(times)}


def main() -> None:
    action, *args = sys.argv[1:]
    if action == "submit":
        result = submit(*args)
    elif action == "steady":
        bodies = [json.loads(body) for body in args[3:] if not body.startswith("@")]
        for path in (body[1:] for body in args[3:] if body.startswith("@")):
            with open(path, encoding="utf-8") as bodies_file:
                bodies += json.load(bodies_file)
        result = steady(args[0], args[1], float(args[2]), bodies)
    elif action == "check":
        result = check(args[0])
    elif action == "finished":
        result = finished(args[0])
    elif action == "order":
        result = order(args[0])
    else:
        raise SystemExit(f"unknown action {action}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
