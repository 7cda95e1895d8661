"""quiet_orbax_errors: a failed orbax read costs the caller one exception, not pages of stderr."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading

from jaxparams.io.orbax_io import quiet_orbax_errors


def _fail_in_a_background_loop() -> None:
  """What tensorstore does on a damaged file: a task on its own loop fails, nobody awaits it."""

  async def broken():
    raise ValueError("Error reading local file: truncated")

  def run():
    loop = asyncio.new_event_loop()
    task = loop.create_task(broken())
    loop.run_until_complete(asyncio.sleep(0))
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    del task  # the failed task, with its exception never retrieved, is now garbage

  t = threading.Thread(target=run)
  t.start()
  t.join()


def _records_while(fn) -> list[logging.LogRecord]:
  seen: list[logging.LogRecord] = []

  class Keep(logging.Handler):
    def emit(self, record):
      seen.append(record)

  handler = Keep(level=logging.DEBUG)
  logger = logging.getLogger("asyncio")
  logger.addHandler(handler)
  try:
    fn()
    gc.collect()
  finally:
    logger.removeHandler(handler)
  return [r for r in seen if "never retrieved" in r.getMessage()]


def test_unretrieved_task_exception_is_reported_without_the_block():
  # The control: the failure this block exists to hide does reach asyncio's logger.
  assert _records_while(_fail_in_a_background_loop), "the control case logged nothing"


def test_unretrieved_task_exception_is_dropped_inside_the_block():
  def inside():
    with quiet_orbax_errors():
      _fail_in_a_background_loop()

  assert _records_while(inside) == []
  # And the filter is gone afterwards: a later failure is reported again.
  assert _records_while(_fail_in_a_background_loop)
