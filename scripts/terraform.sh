#!/usr/bin/env bash
# Run terraform in terraform/. Providers come from the registry, unless
# TF_PROVIDER_MIRROR names a local filesystem mirror (a directory holding
# registry.terraform.io/hashicorp/aws/...), as offline tests need.
# Usage: scripts/terraform.sh ARGS...
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

if ! command -v terraform >/dev/null; then
  echo "error: terraform not found; install Terraform 1.6 or newer" >&2
  exit 2
fi

if [ -n "${TF_PROVIDER_MIRROR:-}" ]; then
  if [ ! -d "$TF_PROVIDER_MIRROR/registry.terraform.io/hashicorp/aws" ]; then
    echo "error: TF_PROVIDER_MIRROR=$TF_PROVIDER_MIRROR holds no registry.terraform.io/hashicorp/aws" >&2
    exit 2
  fi
  mkdir -p "$root/.cache"
  cat >"$root/.cache/terraformrc" <<CONFIG
provider_installation {
  filesystem_mirror {
    path    = "$TF_PROVIDER_MIRROR"
    include = ["registry.terraform.io/hashicorp/aws"]
  }
  direct {
    exclude = ["registry.terraform.io/hashicorp/aws"]
  }
}
CONFIG
  export TF_CLI_CONFIG_FILE="$root/.cache/terraformrc"
elif [ -n "${TF_CLI_CONFIG_FILE:-}" ] && [ ! -f "$TF_CLI_CONFIG_FILE" ]; then
  # A CLI config named but absent only produces warnings.
  unset TF_CLI_CONFIG_FILE
fi

cd "$root/terraform"
exec terraform "$@"
