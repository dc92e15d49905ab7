"""The chaos scenario's order: the resize tests first (they start from one
RabbitMQ node and leave a cluster of 3), then the fault suite on that cluster."""

from __future__ import annotations

FILE_ORDER = ["test_resize.py", "test_faults.py"]


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        name = item.path.name
        return FILE_ORDER.index(name) if name in FILE_ORDER else len(FILE_ORDER)

    items.sort(key=rank)
