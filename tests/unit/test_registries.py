"""The name tables (roles, reward backends, conditioning modes, weight transports): every entry
resolves, the config's choices are exactly the table's names, and an unknown name fails naming the
known ones. Also the one loopback rule both the gRPC service and the ZeroMQ links use."""

from __future__ import annotations

import inspect

import pytest

from ixt_stream import config, lazy, net, roles
from ixt_stream.condition import modes
from ixt_stream.critique import registry as backends
from ixt_stream.types import Label
from ixt_stream.weights import registry as transports


@pytest.mark.parametrize("enum, table", [
    (config.RewardBackend, backends.BACKENDS),
    (config.ConditionMode, modes.MODES),
    (config.WeightTransport, transports.TRANSPORTS),
])
def test_config_choices_are_the_registry_names(enum, table):
    assert [m.value for m in enum] == list(table)


def test_every_role_backend_and_transport_resolves_to_a_function():
    for target in [*(r.entry for r in roles.ROLES.values()), *backends.BACKENDS.values()]:
        assert callable(lazy.resolve(target)), target
        assert list(inspect.signature(lazy.resolve(target)).parameters) == ["cfg"], target
    for name in transports.TRANSPORTS:
        writer, reader = transports.factory(name, 0), transports.factory(name, 1)
        assert list(inspect.signature(writer).parameters) == ["cfg", "root", "run_id", "dtype"], name
        assert list(inspect.signature(reader).parameters) == ["cfg", "root", "run_id", "generator_id"], name


def test_role_order_is_start_order_and_the_default():
    assert list(roles.ROLES) == ["reward", "learner", "orchestrator", "generator"]
    assert config.RunConfig().roles == list(roles.ROLES)


def test_modes_write_their_feedback():
    assert modes.get("label").text(Label.GOOD, "ignored") == "Feedback on the answer below. Quality: good."
    assert modes.get("critique").text(Label.BAD, " off by one ").endswith("Critique: off by one")
    assert modes.get("critique").shows_critique and not modes.get("label").shows_critique
    assert modes.get("none").text is None


@pytest.mark.parametrize("call, what", [
    (lambda: modes.get("vibes"), "conditioning mode 'vibes'; choose one of critique, label, none"),
    (lambda: transports.factory("pigeon", 0), "weight transport 'pigeon'; choose one of filesystem"),
])
def test_unknown_names_fail_naming_the_known_ones(call, what):
    with pytest.raises(ValueError, match=what):
        call()


@pytest.mark.parametrize("host, loopback", [
    ("localhost", True), ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True),
    ("0.0.0.0", False), ("10.0.0.1", False), ("[2001:db8::1]", False), ("example.org", False), ("", False),
])
def test_is_loopback(host, loopback):
    assert net.is_loopback(host) is loopback
