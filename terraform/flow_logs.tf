# VPC flow logs: every accepted and rejected connection in the kit's VPC, to
# CloudWatch Logs, kept flow_log_retention_days. They answer "who talked to
# the broker" and "what did the security groups refuse" after an incident.
# A small deployment writes a few MB a day; flow_logs = false turns them off.
# With an existing VPC (vpc_id), its owner decides about flow logs.
data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

locals {
  flow_logs   = local.create_vpc && var.flow_logs
  arn_account = "${data.aws_partition.current.partition}:%s:${var.region}:${data.aws_caller_identity.current.account_id}"
}

resource "aws_cloudwatch_log_group" "flow_logs" {
  #checkov:skip=CKV_AWS_158:CloudWatch Logs encrypts every log group at rest with service-managed keys; a customer-managed KMS key (a monthly fee and a key policy to keep) is for accounts that must hold the key themselves
  count = local.flow_logs ? 1 : 0

  name              = "/${var.project}/${var.environment}/vpc-flow-logs"
  retention_in_days = var.flow_log_retention_days
  tags              = merge(local.tags, { Name = "${local.name}-vpc-flow-logs" })
}

# The role the flow logs service assumes to write into that log group, and
# nothing else; only for this account's flow logs (confused deputy).
resource "aws_iam_role" "flow_logs" {
  count = local.flow_logs ? 1 : 0

  name        = "${local.name}-flow-logs"
  description = "VPC flow logs of ${local.name} write to their CloudWatch log group"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "vpc-flow-logs.amazonaws.com" }
      Action    = "sts:AssumeRole"
      Condition = {
        StringEquals = { "aws:SourceAccount" = data.aws_caller_identity.current.account_id }
        ArnLike      = { "aws:SourceArn" = "arn:${format(local.arn_account, "ec2")}:vpc-flow-log/*" }
      }
    }]
  })
  tags = merge(local.tags, { Name = "${local.name}-flow-logs" })
}

resource "aws_iam_role_policy" "flow_logs" {
  count = local.flow_logs ? 1 : 0

  name = "write-vpc-flow-logs"
  role = aws_iam_role.flow_logs[0].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Effect   = "Allow"
        Action   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
        Resource = "${aws_cloudwatch_log_group.flow_logs[0].arn}:*"
      },
      {
        Effect   = "Allow"
        Action   = "logs:DescribeLogGroups"
        Resource = "arn:${format(local.arn_account, "logs")}:log-group:*"
      },
    ]
  })
}

resource "aws_flow_log" "vpc" {
  count = local.flow_logs ? 1 : 0

  vpc_id                   = aws_vpc.this[0].id
  traffic_type             = "ALL"
  log_destination_type     = "cloud-watch-logs"
  log_destination          = aws_cloudwatch_log_group.flow_logs[0].arn
  iam_role_arn             = aws_iam_role.flow_logs[0].arn
  max_aggregation_interval = 600
  tags                     = merge(local.tags, { Name = "${local.name}-vpc" })
}
