"""functions/basic-background: the seed's Basic Pattern, through EdgeClient and as a unit under load_function."""

from __future__ import annotations

from edgeruntime.testing import EdgeClient, execution_context, load_function
from tests.examples.conftest import FUNCTIONS


async def test_answers_202_before_the_background_work_ends(client: EdgeClient) -> None:
    r = await client.invoke("basic-background", json={"userId": "u1", "action": "login"})
    assert r.status_code == 202
    assert r.json() == {"accepted": True}
    [task] = client.pending()
    assert task.name == "process_in_background"
    await client.drain()
    assert client.pending() == []


async def test_unit_test_with_load_function() -> None:
    fn = load_function(FUNCTIONS / "basic-background")
    vars(fn.module)["STEP_SECONDS"] = 0.2  # three steps: 0.6 s of background work, the response needs none
    async with execution_context(fn) as ctx, fn.client() as http:
        r = await http.post("/basic-background", json={"userId": "u2", "action": "buy"})
        assert r.status_code == 202
        assert fn.module.PROCESSED == []  # the response did not wait for the work
        await ctx.drain()
        assert fn.module.PROCESSED == [{"userId": "u2", "action": "buy"}]


async def test_a_body_without_user_id_gets_its_202_as_in_typescript(client: EdgeClient) -> None:
    # `const { userId, action } = await req.json()` on {}: two undefineds, and the seed goes on.
    r = await client.invoke("basic-background", json={})
    assert (r.status_code, r.json()) == (202, {"accepted": True})
    await client.drain()
    assert client.module("basic-background").PROCESSED[-1] == {"userId": None, "action": None}
