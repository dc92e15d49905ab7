#!/usr/bin/env bash
# Integration test of terraform/ and inventories/aws against a local AWS API:
# moto_server on a free loopback port, no AWS account, no network.
#
#   1. terraform init, apply (deployment "ci", the default sizes: 3 rabbitmq,
#      3 redis, 2 workers, 1 api over 3 availability zones), then plan
#      -detailed-exitcode must find nothing to change, also with another
#      AMI (the instances ignore it); 2 rabbitmq nodes are refused;
#   2. a second deployment (environment "other", 1 rabbitmq) applied into
#      the same moto;
#   3. tests/terraform (pytest): the aws_ec2 inventory of "ci" has exactly its
#      hosts in the groups rabbitmq, redis, workers, api and monitoring, none of "other",
#      every ansible_host the host's private address, the rabbitmq nodes in
#      distinct availability zones;
#   4. terraform destroy of "ci"; its inventory is empty, "other" untouched;
#   5. terraform destroy of "other".
#
# Terraform runs on a copy of terraform/*.tf in a temporary directory, one
# workspace per deployment: the user's state, workspaces, terraform.tfvars
# and backend are never read or touched. Nothing connects to an instance
# address (moto's addresses are made up): the inventory is only listed.
#
# Needs .venv (make venv) and Terraform. TF_PROVIDER_MIRROR is used when set
# (see scripts/terraform.sh). Usage: tests/terraform/moto-apply.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$root/.venv"
started=$(date +%s)
step_started=$started

step() {
  local now
  now=$(date +%s)
  if [ -n "${step_name:-}" ]; then
    echo "--- ${step_name}: done in $((now - step_started))s"
  fi
  step_name="$1"
  step_started=$now
  echo "=== moto-apply: $1"
}

fail() {
  echo "moto-apply: FAILED: $*" >&2
  exit 1
}

for tool in moto_server python ansible-inventory pytest; do
  [ -x "$venv/bin/$tool" ] || fail "$venv/bin/$tool is missing: run make venv"
done
command -v terraform >/dev/null || fail "terraform not found; install Terraform 1.6 or newer"

work="$(mktemp -d "${TMPDIR:-/tmp}/tf-moto-test.XXXXXX")"
moto_pid=""
cleanup() {
  local rc=$?
  if [ -n "$moto_pid" ] && kill -0 "$moto_pid" 2>/dev/null; then
    kill "$moto_pid" 2>/dev/null || true
    wait "$moto_pid" 2>/dev/null || true
  fi
  if [ $rc -ne 0 ] && [ -s "$work/moto.log" ]; then
    echo "--- last lines of the moto_server log:" >&2
    tail -n 20 "$work/moto.log" >&2 || true
  fi
  rm -rf "$work"
  echo "--- ${step_name:-start}: $([ $rc = 0 ] && echo "done" || echo FAILED) in $(($(date +%s) - step_started))s"
  echo "=== moto-apply: $([ $rc = 0 ] && echo passed || echo "FAILED (exit $rc)") in $(($(date +%s) - started))s"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Nothing of the user's AWS or Terraform settings may leak in: no profile,
# credentials file, endpoint override, TF_VAR_*, workspace or CLI arguments.
while IFS= read -r name; do
  case "$name" in
    AWS_* | TF_VAR_* | TF_CLI_ARGS* | TF_WORKSPACE | TF_DATA_DIR) unset "$name" ;;
  esac
done < <(compgen -e)
export PATH="$venv/bin:$PATH"
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
export AWS_CONFIG_FILE="$work/aws-config" AWS_SHARED_CREDENTIALS_FILE="$work/aws-credentials"
export TF_IN_AUTOMATION=1 TF_INPUT=0
export ANSIBLE_CONFIG="$root/ansible.cfg" ANSIBLE_DEPRECATION_WARNINGS=false
if [ -z "${TF_PROVIDER_MIRROR:-}" ]; then
  # From the registry: keep the provider between runs instead of downloading
  # it again.
  export TF_PLUGIN_CACHE_DIR="$root/.cache/terraform-plugins"
  mkdir -p "$TF_PLUGIN_CACHE_DIR"
fi

step "start moto_server on loopback"
port="$(python - <<'PY'
import socket

with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1])
PY
)"
moto_server -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto_pid=$!
export AWS_ENDPOINT_URL="http://127.0.0.1:$port"
python - "$AWS_ENDPOINT_URL" <<'PY' || fail "moto_server did not answer on $AWS_ENDPOINT_URL within 60s"
import sys
import time
import urllib.error
import urllib.request

deadline = time.monotonic() + 60
while True:
    try:
        with urllib.request.urlopen(sys.argv[1] + "/moto-api/", timeout=2):
            break
    except urllib.error.HTTPError:
        break  # an HTTP answer, whatever its status: the server is up
    except OSError:
        if time.monotonic() > deadline:
            sys.exit(1)
        time.sleep(0.5)
PY
echo "moto_server (pid $moto_pid) answers on $AWS_ENDPOINT_URL"

step "copy terraform/ to a scratch directory and terraform init"
tf="$work/terraform"
mkdir "$tf"
for file in "$root"/terraform/*.tf; do
  name="$(basename "$file")"
  # Leave out the user's backend (and overrides): state stays in the scratch
  # directory.
  case "$name" in *override.tf) continue ;; esac
  if grep -Eq '^[[:space:]]*backend[[:space:]]+"' "$file"; then
    echo "leaving out $name (a backend)"
    continue
  fi
  cp "$file" "$tf/"
done
cp "$root/terraform/.terraform.lock.hcl" "$tf/"
terraform_() {
  "$root/scripts/terraform.sh" -chdir="$tf" "$@"
}
terraform_ init -input=false -no-color >"$work/init.log" 2>&1 || {
  cat "$work/init.log" >&2
  fail "terraform init"
}
tail -n 1 "$work/init.log"

# moto has no Debian image: any of its stock x86_64 images stands in; a
# second one plays the newer image the instances must ignore.
read -r ami newer_ami < <(python - <<'PY'
import boto3

images = boto3.client("ec2").describe_images(Filters=[{"Name": "architecture", "Values": ["x86_64"]}])["Images"]
print(*sorted(image["ImageId"] for image in images)[:2])
PY
)
[ -n "${newer_ami:-}" ] || fail "moto offers fewer than two x86_64 images"
common_vars=(-var "region=$AWS_REGION" -var "operator_cidr=203.0.113.0/24" -var "key_name=tf-moto-test" -var "ami_id=$ami")
# ci: the default sizes and zones of terraform/variables.tf.
ci_vars=("${common_vars[@]}" -var "environment=ci")
ci_counts='{"rabbitmq": 3, "redis": 3, "workers": 2, "api": 1, "monitoring": 1}'
ci_az_count=3
# other: the smallest sizes, no monitoring host, and a second group of worker hosts.
other_vars=("${common_vars[@]}" -var "environment=other"
  -var 'hosts={rabbitmq={count=1},redis={count=1},workers={count=1},api={count=1},monitoring={count=0}}'
  -var 'worker_groups={reports={count=2,instance_type="t3.medium"}}')

in_workspace() {
  local workspace="$1"
  shift
  terraform_ workspace select -or-create=true "$workspace" >/dev/null
  terraform_ "$@"
}

step "terraform apply (environment ci: 3 rabbitmq, 3 redis, 2 workers, 1 api, 1 monitoring)"
in_workspace ci apply -auto-approve -input=false -no-color "${ci_vars[@]}" >"$work/apply-ci.log" 2>&1 || {
  cat "$work/apply-ci.log" >&2
  fail "terraform apply (ci)"
}
grep -E '^Apply complete' "$work/apply-ci.log"

# A plan of workspace ci that must change nothing: expect_empty_plan LOG
# WHY-IT-WOULD-CHANGE [plan arguments...]
expect_empty_plan() {
  local log="$1" why="$2"
  shift 2
  set +e
  in_workspace ci plan -detailed-exitcode -input=false -no-color "${ci_vars[@]}" "$@" >"$log" 2>&1
  local plan_rc=$?
  set -e
  case $plan_rc in
    0) grep -E '^No changes' "$log" ;;
    2)
      grep -E '^  # |^Plan:' "$log" >&2 || true
      fail "$why"
      ;;
    *)
      cat "$log" >&2
      fail "terraform plan (ci $*)"
      ;;
  esac
}

step "terraform plan after apply must be empty"
expect_empty_plan "$work/plan-ci.log" "the second plan wants changes (drift between terraform/ and what the API returns)"
terraform_ output -json >"$work/outputs-ci.json"

step "a newer image replaces no instance (lifecycle ignore_changes)"
expect_empty_plan "$work/plan-ci-ami.log" "ami_id=$newer_ami (instead of $ami) wants to change instances" -var "ami_id=$newer_ami"

step "2 rabbitmq nodes are refused, with the reason"
if in_workspace ci plan -refresh=false -input=false -no-color "${ci_vars[@]}" -var 'hosts={rabbitmq={count=2}}' >"$work/plan-two.log" 2>&1; then
  fail "a plan with 2 rabbitmq nodes succeeded"
fi
# Terraform wraps the message: join the lines of the log first.
tr -s ' \n' ' ' <"$work/plan-two.log" | grep -Eo 'hosts.rabbitmq.count must be 1, or 3 and more, not 2: quorum queues need a majority[^.]*\.' \
  || { cat "$work/plan-two.log" >&2; fail "the plan with 2 rabbitmq nodes failed without the reason"; }

step "terraform apply (environment other, same moto: must stay out of ci's inventory)"
in_workspace other apply -auto-approve -input=false -no-color "${other_vars[@]}" >"$work/apply-other.log" 2>&1 || {
  cat "$work/apply-other.log" >&2
  fail "terraform apply (other)"
}
grep -E '^Apply complete' "$work/apply-other.log"
terraform_ output -json >"$work/outputs-other.json"

cat >"$work/expect.json" <<JSON
{
  "project": "celery-kit",
  "environment": "ci",
  "vpc_cidr": "10.42.0.0/16",
  "counts": $ci_counts,
  "az_count": $ci_az_count,
  "outputs": $(cat "$work/outputs-ci.json"),
  "other": {"environment": "other", "outputs": $(cat "$work/outputs-other.json")}
}
JSON
export KIT_TF_TEST_EXPECT="$work/expect.json"
pytest_=(python -m pytest -p no:cacheprovider -q "$root/tests/terraform")

step "inventory of ci (ansible-inventory with the aws_ec2 plugin, tests/terraform)"
"${pytest_[@]}" -m deployed

step "terraform destroy (environment ci)"
in_workspace ci destroy -auto-approve -input=false -no-color "${ci_vars[@]}" >"$work/destroy-ci.log" 2>&1 || {
  cat "$work/destroy-ci.log" >&2
  fail "terraform destroy (ci)"
}
grep -E '^Destroy complete' "$work/destroy-ci.log"

step "inventory of ci is empty, other still listed (tests/terraform)"
"${pytest_[@]}" -m destroyed

step "terraform destroy (environment other)"
in_workspace other destroy -auto-approve -input=false -no-color "${other_vars[@]}" >"$work/destroy-other.log" 2>&1 || {
  cat "$work/destroy-other.log" >&2
  fail "terraform destroy (other)"
}
grep -E '^Destroy complete' "$work/destroy-other.log"
step "stop moto_server"
