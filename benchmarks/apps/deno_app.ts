// The runtime edgeruntime emulates: Deno.serve with the same two endpoints as the other peers, the
// background work registered through a stand-in for the Supabase edge runtime's
// `EdgeRuntime.waitUntil`. No imports: it runs with network access to its own port only.
//
//   deno run --no-remote --no-npm --allow-net=127.0.0.1:PORT deno_app.ts PORT

const counts = { started: 0, completed: 0 };

// The platform keeps a worker alive until every promise given to waitUntil settles; holding them
// is what that costs here too.
const pending = new Set<Promise<unknown>>();
const EdgeRuntime = {
  waitUntil(promise: Promise<unknown>): void {
    pending.add(promise);
    promise.finally(() => pending.delete(promise));
  },
};

async function work(): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, 2000));
  counts.completed += 1;
}

function handler(req: Request): Response {
  const { pathname } = new URL(req.url);
  if (pathname === "/hello") {
    return Response.json({ ok: true });
  }
  if (pathname === "/bg") {
    if (req.method === "POST") {
      counts.started += 1;
      EdgeRuntime.waitUntil(work());
      return Response.json({ accepted: true }, { status: 202 });
    }
    return Response.json(counts);
  }
  return new Response("not found", { status: 404 });
}

const port = Number(Deno.args[0]);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error(`usage: deno run --allow-net=127.0.0.1:PORT deno_app.ts PORT (got ${Deno.args[0]})`);
  Deno.exit(2);
}
Deno.serve({ hostname: "127.0.0.1", port, onListen() {} }, handler);
