"""RabbitMQ as the kit's tools use it: one py-amqp connection, confirmed publishes.

The broker mover and the dead-letter tools publish through it: a message
counts as delivered only once RabbitMQ confirmed it, and only then does the
tool delete its source (a Redis list entry, a dead-letter message).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import amqp

from celery_kit import amqpurl

CONFIRM_TIMEOUT_SECONDS = 60.0


class BrokerError(Exception):
    """RabbitMQ cannot be reached, or refused or did not confirm a message."""


@dataclass(frozen=True)
class AmqpMessage:
    """What to publish to RabbitMQ: body, py-amqp properties and where to."""

    body: bytes
    properties: dict[str, Any]
    exchange: str
    routing_key: str


def amqp_params(url: str) -> dict[str, Any]:
    """py-amqp connection parameters from an amqp:// or amqps:// URL (celery_kit.amqpurl)."""
    try:
        return amqpurl.amqp_params(url)
    except amqpurl.AmqpUrlError as exc:
        raise BrokerError(str(exc)) from exc


class Rabbit:
    """One py-amqp connection and channel.

    publish() uses publisher confirms a batch at a time: the channel is put
    in confirm mode once, a batch of messages is sent, and the call returns
    only when RabbitMQ acknowledged every one of them (it raises on a nack,
    on a message returned as unroutable, or after CONFIRM_TIMEOUT_SECONDS).
    """

    def __init__(self, url: str) -> None:
        try:
            self.connection = amqp.Connection(**amqp_params(url))
            self.connection.connect()
            self.channel = self.connection.channel()
        except (OSError, amqp.exceptions.AMQPError) as exc:
            raise BrokerError(f"cannot reach RabbitMQ: {exc}") from exc
        self._confirming = False
        self._sent = 0
        self._unconfirmed: set[int] = set()
        self._failures: list[str] = []

    def close(self) -> None:
        try:
            self.connection.close()
        except (OSError, amqp.exceptions.AMQPError):
            pass

    def queue_state(self, name: str) -> tuple[int, int]:
        """(ready messages, consumers) of an existing queue; never declares one."""
        try:
            _, messages, consumers = self.channel.queue_declare(name, passive=True)
        except amqp.exceptions.NotFound as exc:
            raise BrokerError(f"queue {name!r} does not exist on RabbitMQ (run the rabbitmq role first)") from exc
        return messages, consumers

    def exchange_exists(self, name: str) -> bool:
        """Whether an exchange exists; asked on a channel of its own (a 404 closes it)."""
        channel = self.connection.channel()
        try:
            channel.exchange_declare(name, "topic", passive=True)
        except amqp.exceptions.NotFound:
            return False
        channel.close()
        return True

    def _start_confirms(self) -> None:
        self.channel.confirm_select()
        self.channel.events["basic_ack"].add(self._on_ack)
        self.channel.events["basic_nack"].add(self._on_nack)
        self.channel.events["basic_return"].add(self._on_return)
        self._confirming = True

    def _settle(self, tag: int, multiple: bool) -> set[int]:
        settled = {sent for sent in self._unconfirmed if sent <= tag} if multiple else {tag}
        self._unconfirmed -= settled
        return settled

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        self._settle(delivery_tag, multiple)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        settled = self._settle(delivery_tag, multiple)
        self._failures.append(f"RabbitMQ refused (nack) {len(settled)} message(s)")

    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        self._failures.append(f"RabbitMQ could not route a message to {routing_key!r}: {exc}")

    def publish(self, messages: list[AmqpMessage]) -> None:
        """Publish persistent, mandatory messages and wait until all are confirmed."""
        if not self._confirming:
            self._start_confirms()
        for message in messages:
            self.channel.basic_publish(
                amqp.Message(message.body, **message.properties),
                exchange=message.exchange,
                routing_key=message.routing_key,
                mandatory=True,
            )
            self._sent += 1
            self._unconfirmed.add(self._sent)
        deadline = time.monotonic() + CONFIRM_TIMEOUT_SECONDS
        while self._unconfirmed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerError(f"RabbitMQ did not confirm {len(self._unconfirmed)} message(s) in time")
            try:
                self.connection.drain_events(timeout=min(remaining, 1.0))
            except TimeoutError:
                continue
        if self._failures:
            raise BrokerError("; ".join(self._failures))

    def get(self, queue: str) -> amqp.Message | None:
        """One message, unacknowledged until ack() (basic_get)."""
        return self.channel.basic_get(queue, no_ack=False)

    def ack(self, delivery_tag: int) -> None:
        """Acknowledge one message got on this channel."""
        self.channel.basic_ack(delivery_tag)

    def ack_through(self, delivery_tag: int) -> None:
        """Acknowledge every message got on this channel up to delivery_tag."""
        self.channel.basic_ack(delivery_tag, multiple=True)
