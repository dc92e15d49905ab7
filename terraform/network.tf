# A VPC (new, or an existing one given as vpc_id) with, in each of
# az_count availability zones, a public subnet (bastion, api hosts, the NAT
# gateway) and a private subnet (rabbitmq, redis, workers).
data "aws_availability_zones" "available" {
  #checkov:skip=CKV_AWS_394:the kit uses the first az_count zones of this list (local.azs, in name order), so a zone AWS adds later does not change where subnets go; Local and Wavelength Zones are filtered out below
  state = "available"

  # Regular Availability Zones only: an opted-in Local Zone (us-west-2-lax-1a)
  # sorts before us-west-2a and would otherwise receive a subnet.
  filter {
    name   = "opt-in-status"
    values = ["opt-in-not-required"]
  }

  lifecycle {
    postcondition {
      condition     = length(self.names) >= var.az_count
      error_message = "Region ${var.region} has ${length(self.names)} availability zones (${join(", ", self.names)}), fewer than az_count = ${var.az_count}: set az_count = ${max(2, length(self.names))} (with 2 zones the RabbitMQ cluster survives the loss of a node, not of a zone)."
    }
  }
}

locals {
  name       = "${var.project}-${var.environment}"
  azs        = slice(data.aws_availability_zones.available.names, 0, var.az_count)
  create_vpc = var.vpc_id == null
  vpc_id     = local.create_vpc ? aws_vpc.this[0].id : var.vpc_id
  igw_id     = local.create_vpc ? aws_internet_gateway.this[0].id : data.aws_internet_gateway.existing[0].id
  tags = {
    Project     = var.project
    Environment = var.environment
  }
}

resource "aws_vpc" "this" {
  count = local.create_vpc ? 1 : 0

  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true
  tags                 = merge(local.tags, { Name = local.name })
}

# The VPC's default security group allows nothing: every host uses the
# kit's own groups below.
resource "aws_default_security_group" "locked" {
  count = local.create_vpc ? 1 : 0

  vpc_id = aws_vpc.this[0].id
  tags   = merge(local.tags, { Name = "${local.name}-default-locked" })
}

resource "aws_internet_gateway" "this" {
  count = local.create_vpc ? 1 : 0

  vpc_id = aws_vpc.this[0].id
  tags   = merge(local.tags, { Name = local.name })
}

data "aws_internet_gateway" "existing" {
  count = local.create_vpc ? 0 : 1

  filter {
    name   = "attachment.vpc-id"
    values = [var.vpc_id]
  }
}

resource "aws_subnet" "public" {
  #checkov:skip=CKV_AWS_130:the public tier by design: only the bastion, the api hosts and the NAT gateway live here, each behind its own security group; rabbitmq, redis and workers are in the private subnets
  count = var.az_count

  vpc_id                  = local.vpc_id
  availability_zone       = local.azs[count.index]
  cidr_block              = cidrsubnet(var.vpc_cidr, 4, count.index)
  map_public_ip_on_launch = true # the bastion and the api hosts answer the operator
  tags                    = merge(local.tags, { Name = "${local.name}-public-${local.azs[count.index]}", Tier = "public" })
}

resource "aws_subnet" "private" {
  count = var.az_count

  vpc_id            = local.vpc_id
  availability_zone = local.azs[count.index]
  cidr_block        = cidrsubnet(var.vpc_cidr, 4, 8 + count.index)
  tags              = merge(local.tags, { Name = "${local.name}-private-${local.azs[count.index]}", Tier = "private" })
}

resource "aws_eip" "nat" {
  domain = "vpc"
  tags   = merge(local.tags, { Name = "${local.name}-nat" })
}

# One NAT gateway: the private hosts reach the Debian mirror through it.
resource "aws_nat_gateway" "this" {
  allocation_id = aws_eip.nat.id
  subnet_id     = aws_subnet.public[0].id
  tags          = merge(local.tags, { Name = local.name })
}

resource "aws_route_table" "public" {
  vpc_id = local.vpc_id
  tags   = merge(local.tags, { Name = "${local.name}-public" })
}

resource "aws_route" "public_internet" {
  route_table_id         = aws_route_table.public.id
  destination_cidr_block = "0.0.0.0/0"
  gateway_id             = local.igw_id
}

resource "aws_route_table_association" "public" {
  count = var.az_count

  subnet_id      = aws_subnet.public[count.index].id
  route_table_id = aws_route_table.public.id
}

resource "aws_route_table" "private" {
  vpc_id = local.vpc_id
  tags   = merge(local.tags, { Name = "${local.name}-private" })
}

resource "aws_route" "private_internet" {
  route_table_id         = aws_route_table.private.id
  destination_cidr_block = "0.0.0.0/0"
  nat_gateway_id         = aws_nat_gateway.this.id
}

resource "aws_route_table_association" "private" {
  count = var.az_count

  subnet_id      = aws_subnet.private[count.index].id
  route_table_id = aws_route_table.private.id
}
