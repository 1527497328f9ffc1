// The benchmarks' kiosk-like events (bench_buffer, bench_codec): an envelope of a given size,
// serialised exactly as Ingest does it, with varied words in its payload.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <random>
#include <string>

#include "agent/api/event.h"
#include "agent/api/uuid.h"
#include "agent/ingest/ingest.h"
#include "agent/store/buffer.h"

namespace omniedge::bench {

// Words for the free-text part of an event: varied like real payloads, so that gzip in the
// drain benchmark sees realistic input rather than one string repeated.
inline constexpr const char* kWords[] = {
    "shelf",  "aisle",   "promo",   "basket", "coffee", "organic", "bread",  "milk",
    "cheese", "apple",   "banana",  "tomato", "pasta",  "rice",    "olive",  "oil",
    "frozen", "pizza",   "yogurt",  "butter", "eggs",   "chicken", "salmon", "beef",
    "salad",  "water",   "juice",   "tea",    "cereal", "honey",   "chips",  "cookies",
    "soap",   "shampoo", "paper",   "towel",  "bag",    "deal",    "member", "points",
    "scan",   "search",  "results", "detail", "review", "compare", "size",   "colour"};

// A stored event whose envelope (the body the buffer keeps and the sync engine sends) is
// `bytes` long, serialised exactly as Ingest does it, with a kiosk-like payload.
inline omniedge::store::StoredEvent makeEvent(const std::string& store_id, std::size_t bytes,
                                              std::minstd_rand& rng) {
  omniedge::Event e;
  const int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  e.id = omniedge::makeUuidV7(now);
  e.type = "kiosk.view";
  e.source = "kiosk:bench";
  e.store_id = store_id;
  e.occurred_at_ms = now;
  e.received_at_ms = now;
  char head[160];
  std::snprintf(head, sizeof head,
                "{\"screen\":\"%s\",\"sku\":\"SKU-%06u\",\"session\":\"%08x%08x\","
                "\"dwell_ms\":%u,\"note\":\"",
                kWords[rng() % std::size(kWords)], static_cast<unsigned>(rng() % 1000000),
                static_cast<unsigned>(rng()), static_cast<unsigned>(rng()),
                static_cast<unsigned>(rng() % 60000));
  e.data_json = "{}";
  const std::size_t fixed = omniedge::serialiseEvent(e).size() - 2 + std::strlen(head) + 2;
  std::string note;
  while (fixed + note.size() < bytes) {
    note += kWords[rng() % std::size(kWords)];
    note.push_back(' ');
  }
  note.resize(bytes > fixed ? bytes - fixed : 1, '.');
  e.data_json = std::string(head) + note + "\"}";
  omniedge::store::StoredEvent s;
  s.id = e.id;
  s.type = e.type;
  s.priority = omniedge::Priority::kNormal;
  s.received_at_ms = now;
  s.body = omniedge::serialiseEvent(e);
  return s;
}

}  // namespace omniedge::bench
