"""fleetsim's loopback addresses stay clear of what another simulator on this machine listens on."""

from __future__ import annotations

import random
import socket

from fleetsim.kubelet import AddressBook, listening_addresses

POD_BASE_LAST_OCTETS = (0, 2)  # AddressBook hands out pod addresses from 127.2.0.2


def test_an_address_being_listened_on_is_seen_and_then_skipped() -> None:
    in_use = listening_addresses()
    third, fourth = random.randrange(200, 250), random.randrange(2, 250)
    while f"127.2.{third}.{fourth}" in in_use or f"127.2.{third}.{fourth + 1}" in in_use:
        third, fourth = random.randrange(200, 250), random.randrange(2, 250)
    address = f"127.2.{third}.{fourth}"
    with socket.socket() as server:
        server.bind((address, 0))
        assert address not in listening_addresses()  # bound, not yet listening
        server.listen()
        listening = listening_addresses()
    assert address in listening
    assert address not in listening_addresses()  # closed

    # A book whose next pod address is exactly that one skips it once told.
    book = AddressBook(offset=(third - POD_BASE_LAST_OCTETS[0]) * 256 + fourth - POD_BASE_LAST_OCTETS[1])
    book.reserve(sorted(listening))
    assert book.take("pod") == f"127.2.{third}.{fourth + 1}"
