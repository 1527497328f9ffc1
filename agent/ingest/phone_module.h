// The phone-number module: Google's libphonenumber behind a two-function C interface, built as
// its own shared object (lib/omniedge/omniedge-phone.so) and loaded by the agent on the first
// phone number it sees. Linked into the daemon, libphonenumber and what it pulls in (ICU,
// protobuf, abseil) cost ~6 MB of resident memory at start, in every store, whether or not it
// ever sees a phone number: loaded on demand, only the agents that need it pay.
#pragma once

#include <cstddef>

extern "C" {

/// Writes `number` (UTF-8, `len` bytes) in E.164 ("+390612345678") into out (NUL-terminated)
/// and returns its length; `region` (ISO 3166 alpha-2, or "ZZ" for none) reads a number
/// without a country code. Returns -1 when it is not a valid phone number, -2 when `out` is
/// too small. Thread: any (libphonenumber's util is thread-safe). Never throws.
int omniedge_phone_e164(const char* number, std::size_t len, const char* region, char* out,
                        std::size_t out_size);

/// Writes the region ("GB") of calling code `code` (44) into out (3 bytes); returns 0, or -1
/// when no region has that code. Thread: any. Never throws.
int omniedge_phone_region(int code, char* out);
}
