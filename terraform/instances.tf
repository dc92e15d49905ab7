# Debian 12 for every host, found by the official Debian account's images
# unless ami_id names one.
data "aws_ami" "debian12" {
  count = var.ami_id == null ? 1 : 0

  most_recent = true
  owners      = ["136693071363"] # Debian's official AWS account

  filter {
    name   = "name"
    values = ["debian-12-amd64-*"]
  }

  filter {
    name   = "virtualization-type"
    values = ["hvm"]
  }
}

locals {
  ami_id = var.ami_id != null ? var.ami_id : data.aws_ami.debian12[0].id

  # One entry per host: "workers-2" => { group = "workers", index = 1, ... }
  hosts = merge([
    for group in local.groups : {
      for index in range(var.hosts[group].count) : "${group}-${index + 1}" => {
        group         = group
        index         = index
        instance_type = var.hosts[group].instance_type
      }
    }
  ]...)
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

  tags        = merge(local.tags, { Name = "${local.name}-${each.key}", Role = each.value.group })
  volume_tags = merge(local.tags, { Name = "${local.name}-${each.key}", Role = each.value.group })
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
}
