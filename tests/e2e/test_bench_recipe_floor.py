"""The recipe benchmark's floor is the recipe's app with only its feed removed,
so `tools/dev bench-recipe` keeps running as the recipe changes."""

import asyncio
from typing import Any

from tools.bench.recipe_servers import recipe, without_feed


def test_the_floor_app_is_the_recipe_with_a_feed_that_never_yields() -> None:
    floor = without_feed(recipe())
    namespace: dict[str, Any] = {"__name__": "floor_app"}

    exec(compile(floor, "app.py", "exec"), namespace)  # noqa: S102  (our recipe's app)
    feed = namespace["_no_feed"]("alice", after=None)

    async def started() -> None:
        await feed.start()
        async with feed:
            waiting = asyncio.ensure_future(anext(feed))
            await asyncio.sleep(0.01)
            assert not waiting.done()
            waiting.cancel()

    asyncio.run(started())
    assert "ledger.changes(" not in floor
    assert floor.replace("_no_feed(user_id, ", "ledger.changes(user_id, ").startswith(
        recipe()
    )
