# Least privilege: one security group per inventory group (plus the
# bastion); each ingress rule names its source group or the operator CIDR.
locals {
  groups = ["rabbitmq", "redis", "workers", "api"]

  # Service ports: to which group, on which port, from which group.
  service_rules = {
    amqp_from_workers       = { to = "rabbitmq", port = 5672, from = "workers" }
    amqp_from_api           = { to = "rabbitmq", port = 5672, from = "api" }
    management_from_workers = { to = "rabbitmq", port = 15672, from = "workers" }
    management_from_api     = { to = "rabbitmq", port = 15672, from = "api" }
    epmd_among_brokers      = { to = "rabbitmq", port = 4369, from = "rabbitmq" }
    erlang_among_brokers    = { to = "rabbitmq", port = 25672, from = "rabbitmq" }
    redis_from_workers      = { to = "redis", port = 6379, from = "workers" }
    redis_from_api          = { to = "redis", port = 6379, from = "api" }
  }
}

resource "aws_security_group" "bastion" {
  name        = "${local.name}-bastion"
  description = "SSH bastion of ${local.name}: SSH from the operator only"
  vpc_id      = local.vpc_id
  tags        = merge(local.tags, { Name = "${local.name}-bastion", Role = "bastion" })
}

resource "aws_security_group" "group" {
  for_each = toset(local.groups)

  name        = "${local.name}-${each.key}"
  description = "${each.key} hosts of ${local.name}"
  vpc_id      = local.vpc_id
  tags        = merge(local.tags, { Name = "${local.name}-${each.key}", Role = each.key })
}

resource "aws_vpc_security_group_ingress_rule" "bastion_ssh_from_operator" {
  security_group_id = aws_security_group.bastion.id
  description       = "SSH from the operator"
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
  cidr_ipv4         = var.operator_cidr
}

resource "aws_vpc_security_group_ingress_rule" "ssh_from_bastion" {
  for_each = aws_security_group.group

  security_group_id            = each.value.id
  description                  = "SSH from the bastion"
  ip_protocol                  = "tcp"
  from_port                    = 22
  to_port                      = 22
  referenced_security_group_id = aws_security_group.bastion.id
}

resource "aws_vpc_security_group_ingress_rule" "service" {
  for_each = local.service_rules

  security_group_id            = aws_security_group.group[each.value.to].id
  description                  = "${each.key} (${each.value.port}/tcp)"
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
  referenced_security_group_id = aws_security_group.group[each.value.from].id
}

resource "aws_vpc_security_group_ingress_rule" "api_from_operator" {
  security_group_id = aws_security_group.group["api"].id
  description       = "API from the operator"
  ip_protocol       = "tcp"
  from_port         = var.api_port
  to_port           = var.api_port
  cidr_ipv4         = var.operator_cidr
}

# Egress: the bastion only to the VPC (SSH onwards); hosts to the VPC and
# to HTTP(S) for packages (through the NAT gateway for private hosts).
resource "aws_vpc_security_group_egress_rule" "bastion_to_vpc" {
  security_group_id = aws_security_group.bastion.id
  description       = "SSH onwards inside the VPC"
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
  cidr_ipv4         = var.vpc_cidr
}

resource "aws_vpc_security_group_egress_rule" "to_vpc" {
  for_each = aws_security_group.group

  security_group_id = each.value.id
  description       = "Anything inside the VPC (other groups still filter their ingress)"
  ip_protocol       = "-1"
  cidr_ipv4         = var.vpc_cidr
}

resource "aws_vpc_security_group_egress_rule" "https" {
  for_each = aws_security_group.group

  security_group_id = each.value.id
  description       = "HTTPS for packages and AWS APIs"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "http" {
  for_each = aws_security_group.group

  security_group_id = each.value.id
  description       = "HTTP for the Debian mirror"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
  cidr_ipv4         = "0.0.0.0/0"
}
