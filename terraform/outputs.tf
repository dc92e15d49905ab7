output "vpc_id" {
  description = "VPC the hosts run in."
  value       = local.vpc_id
}

output "bastion_public_ip" {
  description = "Public address of the SSH bastion (ProxyJump for Ansible and tunnels)."
  value       = aws_instance.bastion.public_ip
}

output "api_public_ips" {
  description = "Public addresses of the api hosts (port var.api_port, from operator_cidr only)."
  value       = [for key, host in aws_instance.host : host.public_ip if host.tags["Role"] == "api"]
}

output "private_ips" {
  description = "Private addresses per inventory group."
  value       = { for group in local.groups : group => [for key, host in aws_instance.host : host.private_ip if host.tags["Role"] == group] }
}

output "instance_ids" {
  description = "Every instance id (hosts and bastion), for the status-check waiter."
  value       = concat([for host in aws_instance.host : host.id], [aws_instance.bastion.id])
}
