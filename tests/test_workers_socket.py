"""The workers' listening socket makes asyncio enable TCP_NODELAY on every connection
(without it each kept-alive response waits ~40 ms for the client's delayed ACK)."""

from __future__ import annotations

import asyncio
import socket

import uvicorn

from app.cli import declared_tcp


async def nodelay_of_an_accepted_connection(listener: socket.socket) -> int:
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
    try:
        _, writer = await asyncio.open_connection(*listener.getsockname()[:2])
        result = await asyncio.wait_for(accepted, 10)
        writer.close()
        return result
    finally:
        server.close()


def test_the_workers_socket_gets_tcp_nodelay_on_its_connections() -> None:
    listener = declared_tcp(uvicorn.Config("app.main:app", host="127.0.0.1", port=0).bind_socket())
    assert listener.proto == socket.IPPROTO_TCP
    assert asyncio.run(nodelay_of_an_accepted_connection(listener)) != 0


def test_other_sockets_are_left_alone() -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
        assert declared_tcp(unix) is unix
