# Debian 13 (trixie) for every host: the newest image of the official Debian
# account, unless ami_id names one. Only new hosts read it: the instances
# ignore later changes of their AMI (see aws_instance.host).
data "aws_ami" "debian" {
  count = var.ami_id == null ? 1 : 0

  most_recent = true
  owners      = ["136693071363"] # Debian's official AWS account

  filter {
    name   = "name"
    values = ["debian-13-amd64-*"]
  }

  filter {
    name   = "virtualization-type"
    values = ["hvm"]
  }
}

locals {
  ami_id = var.ami_id != null ? var.ami_id : data.aws_ami.debian[0].id

  # One entry per host: "workers-2" => { group = "workers", index = 1, ... };
  # the hosts of worker_groups are workers too: "workers-reports-1" =>
  # { group = "workers", worker_group = "reports", ... }.
  hosts = merge(concat(
    [
      for group in local.groups : {
        for index in range(var.hosts[group].count) : "${group}-${index + 1}" => {
          group         = group
          worker_group  = group == "workers" ? "default" : null
          index         = index
          instance_type = var.hosts[group].instance_type
        }
      }
    ],
    [
      for name, worker_group in var.worker_groups : {
        for index in range(worker_group.count) : "workers-${name}-${index + 1}" => {
          group         = "workers"
          worker_group  = name
          index         = index
          instance_type = worker_group.instance_type
        }
      }
    ]
  )...)
}

# A RabbitMQ cluster survives the loss of a zone only if the nodes in the
# other zones are still a majority: 3 nodes over 3 zones are (2 of 3 left),
# 3 over 2 zones are not (the zone holding 2 takes every quorum queue down
# with it). A warning, not an error: a region with only 2 zones, or a
# deliberate az_count = 2, still deploys, and a node's own failure is still
# survived.
check "rabbitmq_survives_the_loss_of_a_zone" {
  assert {
    condition     = var.hosts.rabbitmq.count == 1 || 2 * (var.hosts.rabbitmq.count - ceil(var.hosts.rabbitmq.count / var.az_count)) > var.hosts.rabbitmq.count
    error_message = "${var.hosts.rabbitmq.count} rabbitmq nodes over ${var.az_count} availability zones put ${ceil(var.hosts.rabbitmq.count / var.az_count)} in one zone: losing that zone leaves no majority, and the quorum queues stop. Set az_count to 3 or more (with 3 zones every count but 4 survives it)."
  }
}

resource "aws_instance" "host" {
  #checkov:skip=CKV_AWS_126:basic 5-minute monitoring is always on; 1-minute detailed monitoring costs extra per instance and is opt-in (var.detailed_monitoring)
  #checkov:skip=CKV2_AWS_41:the hosts call no AWS API; without an instance profile there are no AWS credentials on them for IMDS to hand out
  for_each = local.hosts

  ami           = local.ami_id
  instance_type = each.value.instance_type
  key_name      = var.key_name
  # The api hosts answer the operator directly, from a public subnet (which
  # gives them a public address); everything else stays in private subnets.
  # Host n of a group goes to local.azs[(n - 1) % az_count]: a group's hosts
  # take turns over the zones, so the 3 default rabbitmq nodes get one each.
  subnet_id              = each.value.group == "api" ? aws_subnet.public[each.value.index % var.az_count].id : aws_subnet.private[each.value.index % var.az_count].id
  vpc_security_group_ids = [aws_security_group.group[each.value.group].id]
  monitoring             = var.detailed_monitoring
  ebs_optimized          = true

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required" # IMDSv2 only
    http_put_response_hop_limit = 1
  }

  root_block_device {
    volume_type           = "gp3"
    volume_size           = var.root_volume_size
    encrypted             = true
    delete_on_termination = true
  }

  # WorkerGroup (worker hosts only) names the inventory group
  # workers_<WorkerGroup> that worker pools run on.
  tags        = merge(local.tags, { Name = "${local.name}-${each.key}", Role = each.value.group }, each.value.worker_group == null ? {} : { WorkerGroup = each.value.worker_group })
  volume_tags = merge(local.tags, { Name = "${local.name}-${each.key}", Role = each.value.group })

  # The AMI lookup takes the newest Debian image, and a new AMI replaces an
  # instance: without this, the next Debian image release would make
  # Terraform destroy every running host and its data (the broker's queues,
  # Redis' dump). Hosts get their security updates through apt; a deliberate
  # move to another image is `terraform apply -replace=...`, one host at a
  # time. The same holds for the bastion.
  lifecycle {
    ignore_changes = [ami]
  }
}

resource "aws_instance" "bastion" {
  #checkov:skip=CKV_AWS_126:basic 5-minute monitoring is always on; 1-minute detailed monitoring costs extra per instance and is opt-in (var.detailed_monitoring)
  #checkov:skip=CKV2_AWS_41:the bastion calls no AWS API; without an instance profile there are no AWS credentials on it for IMDS to hand out
  ami                    = local.ami_id
  instance_type          = var.bastion_instance_type
  key_name               = var.key_name
  subnet_id              = aws_subnet.public[0].id
  vpc_security_group_ids = [aws_security_group.bastion.id]
  monitoring             = var.detailed_monitoring
  ebs_optimized          = true

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    volume_type           = "gp3"
    volume_size           = 8
    encrypted             = true
    delete_on_termination = true
  }

  tags        = merge(local.tags, { Name = "${local.name}-bastion", Role = "bastion" })
  volume_tags = merge(local.tags, { Name = "${local.name}-bastion", Role = "bastion" })

  # A newer Debian image does not replace it (see aws_instance.host).
  lifecycle {
    ignore_changes = [ami]
  }
}
