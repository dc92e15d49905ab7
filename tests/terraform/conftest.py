"""Stages of the moto run (tests/terraform/moto-apply.sh selects one with -m)."""


def pytest_configure(config):
    config.addinivalue_line("markers", "deployed: checks a live deployment")
    config.addinivalue_line("markers", "destroyed: checks after terraform destroy")
