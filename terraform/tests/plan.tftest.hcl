# Plan-level assertions with a mocked AWS provider: no account, no network.
mock_provider "aws" {
  mock_data "aws_availability_zones" {
    defaults = {
      names = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
    }
  }

  mock_data "aws_ami" {
    defaults = {
      id = "ami-0123456789abcdef0"
    }
  }

  mock_data "aws_caller_identity" {
    defaults = {
      account_id = "123456789012"
    }
  }

  mock_data "aws_partition" {
    defaults = {
      partition = "aws"
    }
  }

  # The flow log checks that these are ARNs.
  mock_resource "aws_cloudwatch_log_group" {
    defaults = {
      arn = "arn:aws:logs:eu-west-1:123456789012:log-group:/celery-kit/dev/vpc-flow-logs"
    }
  }

  mock_resource "aws_iam_role" {
    defaults = {
      arn = "arn:aws:iam::123456789012:role/celery-kit-dev-flow-logs"
    }
  }
}

variables {
  region        = "eu-west-1"
  operator_cidr = "203.0.113.7/32"
  key_name      = "celery-kit"
}

run "default_sizes" {
  command = apply

  assert {
    condition     = length([for h in aws_instance.host : h if h.tags["Role"] == "rabbitmq"]) == 3
    error_message = "three rabbitmq hosts (a cluster) by default"
  }
  assert {
    condition     = length([for h in aws_instance.host : h if h.tags["Role"] == "redis"]) == 3
    error_message = "three redis hosts by default (a primary, two replicas, Sentinel on each)"
  }
  assert {
    condition     = length([for h in aws_instance.host : h if h.tags["Role"] == "workers"]) == 2
    error_message = "two worker hosts by default"
  }
  assert {
    condition     = length([for h in aws_instance.host : h if h.tags["Role"] == "api"]) == 1
    error_message = "one api host by default"
  }
  assert {
    condition     = length([for h in aws_instance.host : h if h.tags["Role"] == "monitoring"]) == 1
    error_message = "one monitoring host by default"
  }
  assert {
    condition     = alltrue([for h in concat(values(aws_instance.host), [aws_instance.bastion]) : h.metadata_options[0].http_tokens == "required"])
    error_message = "every instance requires IMDSv2"
  }
  assert {
    condition = alltrue([for h in concat(values(aws_instance.host), [aws_instance.bastion]) :
    h.root_block_device[0].encrypted && h.root_block_device[0].volume_type == "gp3"])
    error_message = "every root volume is encrypted gp3"
  }
  assert {
    condition = alltrue([for h in values(aws_instance.host) :
    h.tags["Project"] == "celery-kit" && h.tags["Environment"] == "dev" && contains(["rabbitmq", "redis", "workers", "api", "monitoring"], h.tags["Role"])])
    error_message = "every host carries the Project, Environment and Role tags the inventory groups by"
  }
  assert {
    condition = alltrue([for h in values(aws_instance.host) :
    contains(h.tags["Role"] == "api" ? aws_subnet.public[*].id : aws_subnet.private[*].id, h.subnet_id)])
    error_message = "only the api hosts sit in the public subnets; the others in the private ones"
  }
  assert {
    condition     = alltrue(aws_subnet.public[*].map_public_ip_on_launch) && !anytrue(aws_subnet.private[*].map_public_ip_on_launch)
    error_message = "public subnets give addresses, private ones do not"
  }
  assert {
    condition     = length(distinct([for h in values(aws_instance.host) : h.subnet_id if h.tags["Role"] == "workers"])) == 2
    error_message = "the workers spread over two availability zones"
  }
  assert {
    condition     = length(aws_subnet.private) == 3 && length(aws_subnet.public) == 3 && toset(aws_subnet.private[*].availability_zone) == toset(["eu-west-1a", "eu-west-1b", "eu-west-1c"])
    error_message = "three availability zones by default, one public and one private subnet in each"
  }
  assert {
    condition = [for key in ["rabbitmq-1", "rabbitmq-2", "rabbitmq-3"] :
      one([for subnet in aws_subnet.private : subnet.availability_zone if subnet.id == aws_instance.host[key].subnet_id])
    ] == ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
    error_message = "the three rabbitmq nodes sit in private subnets of three different availability zones, one each"
  }
  assert {
    condition     = length(distinct([for h in values(aws_instance.host) : h.subnet_id if h.tags["Role"] == "rabbitmq"])) == 3
    error_message = "the three rabbitmq nodes sit in three different subnets"
  }
  assert {
    condition = tolist(data.aws_ami.debian[0].owners) == tolist(["136693071363"]) && data.aws_ami.debian[0].most_recent && tolist(flatten([
      for filter in data.aws_ami.debian[0].filter : filter.values if filter.name == "name"
    ])) == tolist(["debian-13-amd64-*"])
    error_message = "the hosts run the newest Debian 13 (amd64) image of Debian's official account"
  }
  assert {
    condition     = alltrue([for h in concat(values(aws_instance.host), [aws_instance.bastion]) : h.ami == "ami-0123456789abcdef0"])
    error_message = "every instance runs the image the lookup found"
  }
}

# The state of default_sizes: a newer Debian image (here: another ami_id)
# must not replace a running host.
run "a_new_image_leaves_running_hosts_alone" {
  command = plan

  variables {
    ami_id = "ami-0fedcba987654321f"
  }

  assert {
    condition     = alltrue([for h in concat(values(aws_instance.host), [aws_instance.bastion]) : h.ami == "ami-0123456789abcdef0"])
    error_message = "the instances ignore a changed AMI (lifecycle ignore_changes): no host is replaced"
  }
}

run "security_groups_are_least_privilege" {
  command = apply

  assert {
    condition     = aws_vpc_security_group_ingress_rule.bastion_ssh_from_operator.cidr_ipv4 == "203.0.113.7/32" && aws_vpc_security_group_ingress_rule.bastion_ssh_from_operator.from_port == 22
    error_message = "SSH reaches the bastion only from the operator CIDR"
  }
  assert {
    condition     = alltrue([for rule in aws_vpc_security_group_ingress_rule.ssh_from_bastion : rule.referenced_security_group_id == aws_security_group.bastion.id && rule.cidr_ipv4 == null])
    error_message = "SSH reaches the hosts only from the bastion"
  }
  assert {
    condition = toset([for rule in aws_vpc_security_group_ingress_rule.service : "${rule.security_group_id}:${rule.from_port}:${rule.referenced_security_group_id}"]) == toset([
      "${aws_security_group.group["rabbitmq"].id}:5671:${aws_security_group.group["workers"].id}",
      "${aws_security_group.group["rabbitmq"].id}:5671:${aws_security_group.group["api"].id}",
      "${aws_security_group.group["rabbitmq"].id}:4369:${aws_security_group.group["rabbitmq"].id}",
      "${aws_security_group.group["rabbitmq"].id}:25672:${aws_security_group.group["rabbitmq"].id}",
      "${aws_security_group.group["redis"].id}:6379:${aws_security_group.group["workers"].id}",
      "${aws_security_group.group["redis"].id}:6379:${aws_security_group.group["api"].id}",
      "${aws_security_group.group["redis"].id}:6379:${aws_security_group.group["redis"].id}",
      "${aws_security_group.group["redis"].id}:26379:${aws_security_group.group["redis"].id}",
      "${aws_security_group.group["redis"].id}:26379:${aws_security_group.group["workers"].id}",
      "${aws_security_group.group["redis"].id}:26379:${aws_security_group.group["api"].id}",
      "${aws_security_group.group["redis"].id}:26379:${aws_security_group.group["monitoring"].id}",
      "${aws_security_group.group["rabbitmq"].id}:15691:${aws_security_group.group["monitoring"].id}",
      "${aws_security_group.group["redis"].id}:9121:${aws_security_group.group["monitoring"].id}",
      "${aws_security_group.group["rabbitmq"].id}:9100:${aws_security_group.group["monitoring"].id}",
      "${aws_security_group.group["redis"].id}:9100:${aws_security_group.group["monitoring"].id}",
      "${aws_security_group.group["workers"].id}:9100:${aws_security_group.group["monitoring"].id}",
      "${aws_security_group.group["api"].id}:9100:${aws_security_group.group["monitoring"].id}",
      "${aws_security_group.group["rabbitmq"].id}:5671:${aws_security_group.group["monitoring"].id}",
      "${aws_security_group.group["redis"].id}:6379:${aws_security_group.group["monitoring"].id}",
    ])
    error_message = "AMQP over TLS (5671) from workers, api and the monitoring host (Flower), the management API from no other group (SSH tunnels only), Erlang distribution only among brokers, Redis and Sentinel from workers, api and the monitoring host, replication and Sentinel among the Redis hosts, metrics only from the monitoring host"
  }
  assert {
    condition     = aws_vpc_security_group_ingress_rule.api_from_operator.cidr_ipv4 == "203.0.113.7/32" && aws_vpc_security_group_ingress_rule.api_from_operator.from_port == 8000
    error_message = "the API port is open to the operator CIDR only"
  }
  assert {
    condition     = length(aws_default_security_group.locked[0].ingress) == 0 && length(aws_default_security_group.locked[0].egress) == 0
    error_message = "the VPC's default security group allows nothing"
  }
  assert {
    condition = alltrue([for rule in concat(
      values(aws_vpc_security_group_ingress_rule.ssh_from_bastion), values(aws_vpc_security_group_ingress_rule.service),
      [aws_vpc_security_group_ingress_rule.bastion_ssh_from_operator, aws_vpc_security_group_ingress_rule.api_from_operator],
      values(aws_vpc_security_group_egress_rule.host), [aws_vpc_security_group_egress_rule.bastion_to_vpc],
    ) : rule.description != "" && rule.tags["Purpose"] == rule.description && startswith(rule.tags["Name"], "celery-kit-dev-")])
    error_message = "every rule explains itself in its description and in its Name and Purpose tags (moto keeps only the tags of group-referencing rules)"
  }
  assert {
    condition     = length(distinct([for rule in values(aws_vpc_security_group_ingress_rule.service) : rule.tags["Name"]])) == 19
    error_message = "every service rule has a Name of its own"
  }
}

run "vpc_flow_logs_go_to_cloudwatch" {
  command = apply

  assert {
    condition     = aws_flow_log.vpc[0].vpc_id == aws_vpc.this[0].id && aws_flow_log.vpc[0].traffic_type == "ALL"
    error_message = "the kit's VPC logs accepted and rejected traffic"
  }
  assert {
    condition     = aws_flow_log.vpc[0].log_destination == aws_cloudwatch_log_group.flow_logs[0].arn && aws_cloudwatch_log_group.flow_logs[0].retention_in_days == 365
    error_message = "flow logs go to their own log group, kept a year"
  }
  assert {
    condition = alltrue([for statement in jsondecode(aws_iam_role_policy.flow_logs[0].policy).Statement :
    statement.Resource != "*" && !contains(flatten([statement.Action]), "logs:*")])
    error_message = "the flow logs role writes to its log group only"
  }
  assert {
    condition     = jsondecode(aws_iam_role.flow_logs[0].assume_role_policy).Statement[0].Condition.StringEquals["aws:SourceAccount"] == "123456789012"
    error_message = "only this account's flow logs may assume the role"
  }
}

run "no_flow_logs_when_turned_off" {
  command = plan

  variables {
    flow_logs = false
  }

  assert {
    condition     = length(aws_flow_log.vpc) == 0 && length(aws_cloudwatch_log_group.flow_logs) == 0 && length(aws_iam_role.flow_logs) == 0
    error_message = "flow_logs = false creates no flow log, log group or role"
  }
}

run "an_existing_vpc_keeps_its_own_flow_log_settings" {
  command = plan

  variables {
    vpc_id = "vpc-0123456789abcdef0"
  }

  assert {
    condition     = length(aws_flow_log.vpc) == 0 && length(aws_vpc.this) == 0
    error_message = "with vpc_id the kit creates no VPC and no flow log"
  }
}

run "counts_follow_the_hosts_variable" {
  command = apply

  variables {
    hosts = {
      workers = { count = 5, instance_type = "c6i.large" }
    }
  }

  assert {
    condition     = length([for h in aws_instance.host : h if h.tags["Role"] == "workers" && h.instance_type == "c6i.large"]) == 5
    error_message = "five c6i.large workers"
  }
  assert {
    condition     = length(aws_instance.host) == 13
    error_message = "3 rabbitmq + 3 redis + 5 workers + 1 api + 1 monitoring"
  }
}

run "monitoring_can_be_left_out" {
  command = plan

  variables {
    hosts = {
      monitoring = { count = 0 }
    }
  }

  assert {
    condition     = length([for h in aws_instance.host : h if h.tags["Role"] == "monitoring"]) == 0 && length(aws_instance.host) == 9
    error_message = "hosts.monitoring.count = 0: no monitoring host"
  }
}

run "two_monitoring_hosts_are_refused" {
  command = plan

  variables {
    hosts = {
      monitoring = { count = 2 }
    }
  }

  expect_failures = [var.hosts]
}

run "worker_groups_add_worker_hosts_of_their_own" {
  command = apply

  variables {
    worker_groups = {
      reports = { count = 2, instance_type = "c6i.large" }
    }
  }

  assert {
    condition     = length([for h in aws_instance.host : h if h.tags["Role"] == "workers" && lookup(h.tags, "WorkerGroup", "") == "reports" && h.instance_type == "c6i.large"]) == 2
    error_message = "two c6i.large workers tagged WorkerGroup reports"
  }
  assert {
    condition     = length([for h in aws_instance.host : h if h.tags["Role"] == "workers" && lookup(h.tags, "WorkerGroup", "") == "default"]) == 2
    error_message = "hosts.workers tagged WorkerGroup default"
  }
  assert {
    condition     = length([for h in aws_instance.host : h if h.tags["Role"] != "workers" && contains(keys(h.tags), "WorkerGroup")]) == 0
    error_message = "only worker hosts carry a WorkerGroup tag"
  }
  assert {
    condition     = alltrue([for h in aws_instance.host : h.vpc_security_group_ids == toset([aws_security_group.group["workers"].id]) if h.tags["Role"] == "workers"])
    error_message = "every worker host, of any group, in the workers security group"
  }
}

run "a_worker_group_named_default_is_refused" {
  command = plan

  variables {
    worker_groups = {
      default = { count = 1 }
    }
  }

  expect_failures = [var.worker_groups]
}

run "a_single_rabbitmq_node_is_accepted" {
  command = plan

  variables {
    hosts = {
      rabbitmq = { count = 1 }
    }
  }

  assert {
    condition     = [for h in aws_instance.host : h.subnet_id if h.tags["Role"] == "rabbitmq"] == [aws_subnet.private[0].id]
    error_message = "one rabbitmq host, in the first zone's private subnet"
  }
}

run "two_rabbitmq_nodes_are_refused" {
  command = plan

  variables {
    hosts = {
      rabbitmq = { count = 2 }
    }
  }

  expect_failures = [var.hosts]
}

run "two_redis_hosts_are_refused" {
  command = plan

  variables {
    hosts = {
      redis = { count = 2 }
    }
  }

  expect_failures = [var.hosts]
}

run "the_redis_hosts_take_turns_over_the_zones" {
  command = plan

  assert {
    condition = length(toset([for index in range(1, 4) :
      one([for subnet in aws_subnet.private : subnet.availability_zone if subnet.id == aws_instance.host["redis-${index}"].subnet_id])
    ])) == 3
    error_message = "the 3 redis hosts (primary, replicas, Sentinels) are in 3 zones: losing one leaves a majority of Sentinels"
  }
}

run "five_rabbitmq_nodes_over_three_zones" {
  command = plan

  variables {
    hosts = {
      rabbitmq = { count = 5 }
    }
  }

  assert {
    condition = [for index in range(1, 6) :
      one([for subnet in aws_subnet.private : subnet.availability_zone if subnet.id == aws_instance.host["rabbitmq-${index}"].subnet_id])
    ] == ["eu-west-1a", "eu-west-1b", "eu-west-1c", "eu-west-1a", "eu-west-1b"]
    error_message = "the rabbitmq nodes take turns over the zones (2 + 2 + 1: any zone lost leaves a majority of 3)"
  }
}

run "a_region_with_fewer_zones_than_az_count_is_refused" {
  command = plan

  override_data {
    target = data.aws_availability_zones.available
    values = {
      names = ["us-west-1a", "us-west-1b"]
    }
  }

  expect_failures = [data.aws_availability_zones.available]
}

run "two_zones_warn_that_the_cluster_does_not_survive_a_zone" {
  command = plan

  override_data {
    target = data.aws_availability_zones.available
    values = {
      names = ["us-west-1a", "us-west-1b"]
    }
  }

  variables {
    az_count = 2
  }

  # A check block: a warning, the plan goes on.
  expect_failures = [check.rabbitmq_survives_the_loss_of_a_zone]

  assert {
    condition     = length(aws_subnet.private) == 2 && length([for h in aws_instance.host : h if h.tags["Role"] == "rabbitmq"]) == 3
    error_message = "az_count = 2 still deploys the three rabbitmq nodes, over two zones"
  }
}

run "open_operator_cidr_is_refused" {
  command = plan

  variables {
    operator_cidr = "0.0.0.0/0"
  }

  expect_failures = [var.operator_cidr]
}

run "one_availability_zone_is_refused" {
  command = plan

  variables {
    az_count = 1
  }

  expect_failures = [var.az_count]
}

run "hosts_reach_only_the_vpc_and_web_ports" {
  command = apply

  assert {
    condition = alltrue([for rule in aws_vpc_security_group_egress_rule.host :
    rule.ip_protocol == "-1" ? rule.cidr_ipv4 == "10.42.0.0/16" : rule.ip_protocol == "tcp" && contains([80, 443], coalesce(rule.from_port, -1))])
    error_message = "hosts may talk to the VPC and to ports 80/443 only"
  }
  assert {
    condition     = length(aws_vpc_security_group_egress_rule.host) == 15
    error_message = "three egress rules for each of the five host groups"
  }
  assert {
    condition     = aws_vpc_security_group_egress_rule.bastion_to_vpc.cidr_ipv4 == "10.42.0.0/16" && aws_vpc_security_group_egress_rule.bastion_to_vpc.from_port == 22
    error_message = "the bastion only SSHes into the VPC"
  }
}
