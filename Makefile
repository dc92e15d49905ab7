# celery-kit: the front door. Each target calls a playbook, a script or a
# tool; the logic lives there. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

ENV ?= local
BROKER ?=
RABBITMQ_HOSTS ?=
REDIS_HOSTS ?=
WORKER_HOSTS ?=
API_HOSTS ?=
MONITORING_HOSTS ?=
WORKER_PROCESSES ?=
LOCAL_PRIVILEGED ?=
LOCAL_NETWORK_PREFIX ?=
# TLS=0 turns TLS off (README, "Security"); on by default.
TLS ?=
PYTHON ?= python3
# ENV=aws only (see README, "AWS"): exported as Terraform variables.
AWS_ENVIRONMENT ?=
PROJECT ?=
OPERATOR_CIDR ?=
KEY_NAME ?=
AUTO_APPROVE ?=
# make migrate / rollback-broker: DRY_RUN=1 prints the plan only.
DRY_RUN ?=
# make api-token / api-token-revoke: the token's name; make rotate-secrets:
# the tokens to give new values (a,b).
NAME ?=
# make dlq-replay / dlq-purge: which dead-lettered messages (one of them).
TASK ?=
ID ?=
ALL ?=
# make bench: the sizes of its runs (playbooks/group_vars/all/bench.yml).
BENCH_TASKS ?=
BENCH_THREADS ?=
BENCH_PACED_TASKS ?=
BENCH_PACED_RATE ?=
BENCH_RAW_MESSAGES ?=
# The app to deploy: a directory holding celery-kit.yml, or such a file
# (README, "Deploy your own app"); empty: the sample app.
APP ?=
export AUTO_APPROVE
$(if $(AWS_ENVIRONMENT),$(eval export TF_VAR_environment := $(AWS_ENVIRONMENT)))
$(if $(PROJECT),$(eval export TF_VAR_project := $(PROJECT)))
$(if $(OPERATOR_CIDR),$(eval export TF_VAR_operator_cidr := $(OPERATOR_CIDR)))
$(if $(KEY_NAME),$(eval export TF_VAR_key_name := $(KEY_NAME)))
$(if $(TLS),$(eval export TF_VAR_tls := $(if $(filter 0 no false,$(TLS)),false,true)))

VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export KIT_LOCAL_DEPLOYMENT ?= local

INVENTORY := inventories/$(ENV)
# The APP file: the directory's celery-kit.yml, or the file named.
APP_FILE = $(abspath $(if $(filter %.yml %.yaml,$(APP)),$(APP),$(APP)/celery-kit.yml))
# -e arguments for the settings given on the command line, and only those.
EXTRA_VARS := $(strip \
  $(if $(BROKER),-e celery_broker=$(BROKER)) \
  $(if $(RABBITMQ_HOSTS),-e local_rabbitmq_hosts=$(RABBITMQ_HOSTS)) \
  $(if $(REDIS_HOSTS),-e local_redis_hosts=$(REDIS_HOSTS)) \
  $(if $(WORKER_HOSTS),-e local_worker_hosts=$(WORKER_HOSTS)) \
  $(if $(API_HOSTS),-e local_api_hosts=$(API_HOSTS)) \
  $(if $(MONITORING_HOSTS),-e local_monitoring_hosts=$(MONITORING_HOSTS)) \
  $(if $(WORKER_PROCESSES),-e kit_worker_processes=$(WORKER_PROCESSES)) \
  $(if $(LOCAL_PRIVILEGED),-e local_privileged=$(LOCAL_PRIVILEGED)) \
  $(if $(LOCAL_NETWORK_PREFIX),-e local_network_prefix=$(LOCAL_NETWORK_PREFIX)) \
  $(if $(TLS),-e kit_tls=$(if $(filter 0 no false,$(TLS)),false,true)) \
  $(if $(APP),-e @$(APP_FILE) -e kit_app_dir=$(patsubst %/,%,$(dir $(APP_FILE)))))
# make deploy ENV=aws runs its playbooks from celery-kit aws: same settings.
export KIT_ANSIBLE_SETTINGS := $(EXTRA_VARS)
PLAYBOOK := ansible-playbook -i $(INVENTORY) $(EXTRA_VARS)
# On AWS, commands that reach the hosts run with the region, tags and
# bastion address the aws inventory reads (from Terraform's outputs).
ON_HOSTS := $(if $(filter aws,$(ENV)),celery-kit aws exec)
STATUS_FILE := $(CURDIR)/.cache/status-$(ENV).json
BENCH_FILE := $(CURDIR)/.cache/bench-$(ENV).json

BENCH_VARS := $(strip \
  $(if $(BENCH_TASKS),-e bench_tasks=$(BENCH_TASKS)) \
  $(if $(BENCH_THREADS),-e bench_threads=$(BENCH_THREADS)) \
  $(if $(BENCH_PACED_TASKS),-e bench_paced_tasks=$(BENCH_PACED_TASKS)) \
  $(if $(BENCH_PACED_RATE),-e bench_paced_rate=$(BENCH_PACED_RATE)) \
  $(if $(BENCH_RAW_MESSAGES),-e bench_raw_messages=$(BENCH_RAW_MESSAGES)))

.PHONY: help venv deploy verify status bench migrate rollback-broker dlq dlq-replay dlq-purge api-token api-token-revoke renew-certs rotate-secrets destroy test lint unit terraform molecule chaos clean check-env

help: ## List the targets
	@echo "usage: make TARGET [ENV=local] [VARIABLE=value ...]   (see README.md)"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

venv: $(VENV)/.installed ## Create .venv with the pinned tools

$(VENV)/.installed: requirements.txt constraints.txt kit/pyproject.toml
	scripts/make-venv.sh "$(PYTHON)" "$(VENV)"

check-env:
	@case "$(ENV)" in local|aws) ;; *) echo "error: ENV=$(ENV) is not an environment of this kit; use ENV=local or ENV=aws" >&2; exit 2;; esac

deploy: check-env venv ## Create the hosts and deploy the platform (idempotent)
ifeq ($(ENV),aws)
	celery-kit aws deploy
else
	scripts/ensure-docker.sh
	$(PLAYBOOK) playbooks/local-hosts.yml
	$(PLAYBOOK) playbooks/site.yml
	$(PLAYBOOK) playbooks/summary.yml
endif

verify: check-env venv ## Run the testinfra suite against the deployed hosts
	$(ON_HOSTS) python -m pytest -p no:cacheprovider --ansible-inventory=$(INVENTORY) tests/infra

status: check-env venv ## Print queues (Ready/Unacked/Consumers), workers, Redis replication (with Sentinel) and persistence, the api hosts' outboxes
	$(ON_HOSTS) $(PLAYBOOK) -e status_report_file=$(STATUS_FILE) playbooks/status.yml
	celery-kit status $(STATUS_FILE)

bench: check-env venv ## Compare the brokers on the deployment's hosts: Redis, RabbitMQ quorum, classic; JSON and chart in .cache/
	$(ON_HOSTS) $(PLAYBOOK) $(BENCH_VARS) -e bench_report_file=$(BENCH_FILE) playbooks/bench.yml
	celery-kit bench-report $(BENCH_FILE) --chart $(BENCH_FILE:.json=.png)

MIGRATE := $(ON_HOSTS) $(PLAYBOOK) $(if $(filter 1 yes true,$(DRY_RUN)),-e migration_dry_run=true) playbooks/migrate-broker.yml

# Locally, the RabbitMQ hosts to move onto: RABBITMQ_HOSTS, else those the
# deployment has, else one (as for a new RabbitMQ-broker deployment).
migrate: check-env venv ## Move the deployment from the Redis broker to RabbitMQ, losing no task (DRY_RUN=1: plan only)
ifeq ($(ENV),local)
	$(if $(filter 1 yes true,$(DRY_RUN)),,$(PLAYBOOK) -e '{"local_groups": ["rabbitmq"]}' -e celery_broker=rabbitmq playbooks/local-hosts.yml)
endif
	$(MIGRATE) -e migration_target=rabbitmq

rollback-broker: check-env venv ## Move the deployment back from RabbitMQ to the Redis broker (DRY_RUN=1: plan only)
	$(MIGRATE) -e migration_target=redis

DLQ_SELECTION = $(strip $(if $(TASK),--task $(TASK)) $(if $(ID),--id $(ID)) $(if $(filter 1 yes true,$(ALL)),--all))
comma := ,
empty :=
space := $(empty) $(empty)
DLQ := $(ON_HOSTS) $(PLAYBOOK) playbooks/dlq.yml -e '{"dlq_selection": [$(subst $(space),$(comma),$(patsubst %,"%",$(DLQ_SELECTION)))]}'

dlq: check-env venv ## List the dead-letter queue: task, id, queue, reason, deaths, first death, exception
	$(DLQ) -e dlq_action=list

dlq-replay: check-env venv ## Send dead-lettered tasks back to their queue, confirmed (TASK=name, ID=id or ALL=1)
	$(DLQ) -e dlq_action=replay

dlq-purge: check-env venv ## Delete dead-lettered tasks after a confirmation (TASK=name, ID=id or ALL=1; AUTO_APPROVE=1 skips it)
	$(DLQ) -e dlq_action=purge $(if $(filter 1 yes true,$(AUTO_APPROVE)),-e dlq_confirmed=true)

api-token: check-env venv ## Issue an API token (NAME=<name>): its path in .state/<env>/api-tokens, never the token; no restart
	$(ON_HOSTS) $(PLAYBOOK) -e api_token_action=issue -e api_token_name='$(NAME)' playbooks/api-tokens.yml

api-token-revoke: check-env venv ## Revoke an API token (NAME=<name>) on every api host, at once, no restart
	$(ON_HOSTS) $(PLAYBOOK) -e api_token_action=revoke -e api_token_name='$(NAME)' playbooks/api-tokens.yml

renew-certs: check-env venv ## Give every host a new TLS certificate, one host at a time; services load it without a restart
	$(ON_HOSTS) $(PLAYBOOK) playbooks/renew-certs.yml

rotate-secrets: check-env venv ## Replace every password and the kit's API token (NAME=a,b: those tokens too) with no refused submission and no lost task
	$(ON_HOSTS) $(PLAYBOOK) $(if $(NAME),-e rotate_api_tokens='$(NAME)') playbooks/rotate-secrets.yml

destroy: check-env venv ## Remove the hosts and the deployment's generated state (asks first on AWS)
ifeq ($(ENV),aws)
	celery-kit aws destroy
else
	$(PLAYBOOK) playbooks/local-hosts-destroy.yml
endif

test: venv ## Lint, unit tests, Terraform checks and the molecule scenarios (each timed)
	scripts/timed.sh lint $(MAKE) --no-print-directory lint
	scripts/timed.sh unit $(MAKE) --no-print-directory unit
	scripts/timed.sh terraform $(MAKE) --no-print-directory terraform
	scripts/timed.sh molecule $(MAKE) --no-print-directory molecule

lint: venv ## yamllint, ansible-lint (production profile), ruff
	yamllint --strict .
	ansible-lint --profile production
	ruff check .
	ruff format --check .

unit: venv ## Unit tests (no server needed)
	python -m pytest -p no:cacheprovider tests/unit examples

terraform: venv ## terraform fmt/validate/test (mocked provider), checkov scan, apply/plan/destroy against moto
	scripts/terraform.sh fmt -check -recursive
	scripts/terraform.sh init -input=false -backend=false
	scripts/terraform.sh validate
	scripts/terraform.sh test
	tests/terraform/scan.sh
	tests/terraform/moto-apply.sh

molecule: venv ## Molecule scenarios default (3-node cluster: deploy, idempotence, verify with fault tests), migration (Redis -> RabbitMQ cluster and back) and apps (the Django example: signup, migration, dead-letter replay)
	scripts/ensure-docker.sh
	scripts/timed.sh "molecule default" molecule test --scenario-name default
	scripts/timed.sh "molecule migration" molecule test --scenario-name migration
	scripts/timed.sh "molecule apps" molecule test --scenario-name apps

chaos: venv ## Heavy fault scenarios, not in make test: the RabbitMQ cluster grows 1 -> 3 -> 5 and shrinks to 3 under load, then ten faults one at a time under load, counted (table, .cache/chaos-faults-chaos.json and .png)
	scripts/ensure-docker.sh
	scripts/timed.sh "molecule chaos" molecule test --scenario-name chaos

clean: ## Remove .venv and caches (not the deployments)
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache
