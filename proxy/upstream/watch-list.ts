// An insertion-ordered collection of per-request watches, as a doubly linked list of small nodes, for the idle
// sweeper and the upstream limiter's queue. Why not a Set: a long-lived Set (or Map) that gains and loses an entry
// per request keeps the requests it held alive through young-generation collections, so each request's object graph
// is promoted to the old generation and has to wait for a full collection. test/unit/watch-list.test.ts measures it
// with V8's GC trace: ~1.9 KB of a ~5 KB request graph promoted per request through a Set, ~35 B through this list.
// Our reading: the Set's hash table is rehashed every few requests, and the obsolete tables, once in the old
// generation, still point at the entries they had. In cachegate under wrk the per-request Sets of the sweeper were
// one of two causes of a state in which ~6 KB per request were promoted (the other: V8's allocation-site
// pretenuring, see proxy/v8-flags.ts). A removed node here is cleared at once (item and links), so nothing that is
// gone keeps anything else alive.

/** One entry; its fields are cleared when it is removed. */
export interface ListNode<T> {
  item: T | undefined;
  prev: ListNode<T> | undefined;
  next: ListNode<T> | undefined;
}

export class WatchList<T> {
  private head: ListNode<T> | undefined = undefined;
  private tail: ListNode<T> | undefined = undefined;
  size = 0;

  /** Appends `item`; keep the node to remove it in O(1). */
  push(item: T): ListNode<T> {
    const node: ListNode<T> = { item, prev: this.tail, next: undefined };
    if (this.tail) this.tail.next = node;
    else this.head = node;
    this.tail = node;
    this.size++;
    return node;
  }

  /** The oldest item, if any. */
  first(): ListNode<T> | undefined {
    return this.head;
  }

  /** Every item, oldest first (a copy: the caller may remove items while it goes through them). */
  items(): T[] {
    const out: T[] = [];
    for (let node = this.head; node !== undefined; node = node.next) out.push(node.item as T);
    return out;
  }

  /** Removes `node` if it is still in the list (a second call does nothing). */
  remove(node: ListNode<T>): void {
    if (node.item === undefined) return;
    const { prev, next } = node;
    if (prev) prev.next = next;
    else this.head = next;
    if (next) next.prev = prev;
    else this.tail = prev;
    node.item = undefined;
    node.prev = undefined;
    node.next = undefined;
    this.size--;
  }

  /**
   * Calls `keep` for every item in insertion order; an item it returns false for is removed. `keep` must not
   * change the list itself (the sweeper collects what expired and calls out after the walk).
   */
  filter(keep: (item: T) => boolean): void {
    for (let node = this.head; node !== undefined; ) {
      const next = node.next;
      if (!keep(node.item as T)) this.remove(node);
      node = next;
    }
  }
}
