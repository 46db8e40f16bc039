/**
 * Setup of every test file: yields to the event loop after each test.
 *
 * The vitest worker reports test results over an RPC whose replies it must read within 60 s (birpc's
 * fixed timeout in vitest 3; no option changes it). The property tests are synchronous, so a file of
 * them never returns to the event loop: once one runs longer than 60 s in all (on busy cores, or with
 * SCISSORHANDS_PROPERTY_RUNS), the expired timer fires before the reply is read, and the run fails with
 * `[vitest-worker]: Timeout calling "onTaskUpdate"` although every test passed. Yielding between tests
 * lets the worker read the replies, so only a single test of over 60 s could still trip it.
 */
import { afterEach } from 'vitest';

afterEach(() => new Promise<void>((resolve) => setImmediate(resolve)));
