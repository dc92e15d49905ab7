#!/usr/bin/env bash
# Static security scan of terraform/ with checkov, offline.
#
# checkov lives in its own virtualenv, .cache/checkov-venv, made here when it
# is missing or its pins changed (tests/terraform/scan-constraints.txt), so its
# large dependency tree never meets the kit's .venv.
#
# Policy: every failed check fails the scan. Without a Prisma Cloud API key
# checkov reports no severities, so there is no HIGH/CRITICAL cut to make;
# instead a finding that is accepted must be skipped in the .tf file, inside
# the resource, with its reason:
#   #checkov:skip=CKV_AWS_NNN:why this does not apply or is accepted
# A skip without a reason fails the scan; the skips are listed on every run.
# Nothing is sent anywhere: no API key is passed on, the update check is off.
#
# Usage: tests/terraform/scan.sh   (PYTHON=python3.x to pick the interpreter)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
python="${PYTHON:-python3}"
venv="$root/.cache/checkov-venv"
constraints="$root/tests/terraform/scan-constraints.txt"
checkov_version="$(sed -n 's/^checkov==//p' "$constraints")"
started=$(date +%s)

if [ ! -x "$venv/bin/checkov" ] || ! cmp -s "$constraints" "$venv/.constraints"; then
  echo "=== scan: installing checkov $checkov_version into ${venv#"$root"/}"
  if ! "$python" -m venv --help >/dev/null 2>&1; then
    echo "error: $python has no venv module (Debian/Ubuntu: apt-get install python3-venv)" >&2
    exit 2
  fi
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "checkov==$checkov_version" --constraint "$constraints"
  cp "$constraints" "$venv/.constraints"
fi

# Every skip carries a reason.
unexplained="$(grep -rnE '#[[:space:]]*checkov:skip=[A-Z0-9_]+[[:space:]]*(:[[:space:]]*)?$' "$root/terraform" --include='*.tf' || true)"
if [ -n "$unexplained" ]; then
  echo "scan: FAILED: a checkov skip without its reason (#checkov:skip=ID:reason):" >&2
  echo "$unexplained" >&2
  exit 1
fi

report="$(mktemp)"
trap 'rm -f "$report" "$report.err"' EXIT
echo "=== scan: checkov $checkov_version on terraform/"
set +e
env -u BC_API_KEY -u PRISMA_API_URL \
  CKV_SKIP_PACKAGE_UPDATE_CHECK=true CKV_PARSE_ERROR_FAIL=true \
  "$venv/bin/checkov" --directory "$root/terraform" --framework terraform \
  --skip-download --output json >"$report" 2>"$report.err"
checkov_rc=$?
set -e
if [ ! -s "$report" ]; then
  cat "$report.err" >&2
  rm -f "$report.err"
  echo "scan: FAILED: checkov produced no report (exit $checkov_rc)" >&2
  exit 1
fi
rm -f "$report.err"

"$venv/bin/python" - "$report" "$root/terraform" <<'PY'
import json
import sys

report = json.load(open(sys.argv[1]))
reports = report if isinstance(report, list) else [report]
if reports == [{}] or not reports:
    # checkov prints an empty summary when it found nothing to scan
    reports = []
failed, skipped, passed, parse_errors = [], [], 0, 0
for part in reports:
    results = part.get("results", {})
    failed += results.get("failed_checks", [])
    skipped += results.get("skipped_checks", [])
    passed += part.get("summary", {}).get("passed", 0)
    parse_errors += part.get("summary", {}).get("parsing_errors", 0)


def where(check):
    lines = check.get("file_line_range") or ["?", "?"]
    return f"terraform{check['file_path']}:{lines[0]}-{lines[1]}"


for check in skipped:
    reason = (check.get("check_result") or {}).get("suppress_comment", "")
    print(f"skipped {check['check_id']} {check['resource']} ({where(check)}): {reason}")
for check in failed:
    print(f"FAILED  {check['check_id']} {check['resource']} ({where(check)}): {check['check_name']}")
print(f"checkov: {passed} passed, {len(failed)} failed, {len(skipped)} skipped, {parse_errors} parsing errors")
if parse_errors or passed == 0:
    print("scan: FAILED: checkov parsed nothing or failed to parse a file", file=sys.stderr)
    sys.exit(1)
if failed:
    print(
        "scan: FAILED: fix the findings above, or skip one in its resource with the reason:"
        " #checkov:skip=CKV_...:why",
        file=sys.stderr,
    )
    sys.exit(1)
PY
echo "=== scan: passed in $(($(date +%s) - started))s"
