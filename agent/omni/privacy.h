// Consent that follows the data, and erasure (issue 15 points 1 and 2; docs/omnichannel.md,
// privacy model).
//
// A consent refusal the centre sends (a profile update whose consent refuses a purpose it did
// not refuse before) reaches the events of that customer still waiting in the buffer, not only
// new ones: tracking → per channel (consent.on_refusal) dropped or anonymised, a sale always
// kept, anonymised; marketing → engagement.* dropped. An erasure (`omniedge forget KEY`, the
// `forget` command) joins KEY through the profile cache into every key the profile links and
// removes or anonymises the subject everywhere the agent keeps it: the buffer (pending,
// quarantine, kept delivered events, the recent ring, its free pages and WAL), the profile cache,
// POS files kept in processed/, and every registered PersonalData holder.
// Both are reported upstream as counts (agent.consent_applied, agent.data_erased), never with
// identity.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "agent/api/event.h"
#include "agent/api/personal_data.h"
#include "agent/api/result.h"
#include "agent/ingest/pii.h"
#include "agent/store/buffer.h"
#include "agent/store/profile_cache.h"

namespace omniedge::omni {

/// consent.on_refusal: what a refusal of tracking does to a channel's buffered events.
class ConsentPolicy {
 public:
  enum class Action { kDrop, kAnonymise };
  /// From the config list ("beacon=drop", "kiosk=anonymise", ...; the config checked it).
  /// Channels not listed are anonymised; pos is always anonymised.
  static ConsentPolicy fromList(const std::vector<std::string>& items);
  /// The action for an event type (its channel is the type's first word).
  Action actionFor(std::string_view type) const;

 private:
  std::map<std::string, Action, std::less<>> by_channel_;
};

/// A data subject's identity as the buffer may hold it.
struct Subject {
  SubjectKeys keys;                    // Event::customer form
  std::vector<std::string> canonical;  // "loyalty:L1", "ibeacon:…", as the profile lists them
  std::string profile_id;              // "" when no profile is known
};

/// The subject's keys in Event::customer form: each canonical key's field and value, plus
/// ("profile_id", id) when `profile_id` is set. Thread: any.
SubjectKeys subjectKeysOf(const std::vector<std::string>& canonical, const std::string& profile_id);

class Privacy {
 public:
  /// Appends agent.* report events (the agent's ingest). Thread: the caller's.
  using Reporter = std::function<Result<void>(std::vector<Event>)>;

  /// Every part must outlive this. `data_dir`: data.dir (the inbox's file is there).
  Privacy(store::Buffer& buffer, store::ProfileCache& profiles, const PiiHasher& pii,
          std::filesystem::path data_dir, Reporter report);

  /// Registers a holder of personal data that erasure must reach (visits, triggers). Thread:
  /// any (at startup, before run()).
  void addHolder(PersonalData* holder);
  /// consent.on_refusal changed (remote config, reload). Thread: any.
  void setPolicy(ConsentPolicy policy);
  /// consent.on_refusal for new events (Ingest::setRefusalDrop): true when an event of `type`
  /// from a customer who refused tracking is dropped. Thread: any.
  bool dropsOnTrackingRefusal(std::string_view type) const;
  /// pos.spool_dir (its processed/ holds kept POS files); "" when the POS driver is off.
  /// Thread: any.
  void setPosSpoolDir(std::filesystem::path dir);

  /// Applies the refusals a profile update added to what is buffered of those customers and
  /// reports the counts upstream (agent.consent_applied, with the seqs dropped for the
  /// centre's gap check). Returns the report (counts only). Thread: the sync thread or the
  /// HTTPS uplink's; blocks while the buffer's writer rewrites (a scan of the buffer).
  /// Fails "io" or "stopping" (what was done stays done; the rest is done by ingest for new
  /// events only).
  Result<nlohmann::json> applyRefusals(const std::vector<store::ConsentRefusal>& refusals);

  /// Erasure of the data subject known by `key` ("loyalty:L1", "app:A1", "email:jane@…" or a
  /// bare e-mail, "phone:+44…", "email_sha256:…", a beacon id, "profile:ID"): joined through the
  /// profile cache into every key the profile links. With `dry_run` nothing changes and the
  /// counts say what would go. The answer names the subject only by a keyed hash of its key
  /// ("subject") and gives counts per part; "complete": false with "problems" when a part
  /// could not finish (repeat the command: it is idempotent). Reports agent.data_erased
  /// upstream (counts and the seqs dropped only). Thread: the control socket's or the sync
  /// thread. Blocks on the buffer's writer, the profile cache, file I/O. Fails "invalid"
  /// (naming "key") for a key of no known form.
  Result<nlohmann::json> forget(std::string_view key, bool dry_run);

  /// Periodic (the agent's housekeeping): for a few rounds after an erasure, checkpoints and
  /// truncates the inbox's WAL, so that the R/cmd message that asked for it (removed from the
  /// inbox only once answered, its row zeroed by secure_delete) leaves no copy there either.
  /// Thread: any; blocks for at most about a second.
  void tick();

  /// The subject `key` names, joined through the profile cache. Fails "invalid" (field "key").
  /// Thread: any.
  Result<Subject> resolve(std::string_view key) const;

 private:
  store::Buffer& buffer_;
  store::ProfileCache& profiles_;
  const PiiHasher& pii_;
  const std::filesystem::path data_dir_;
  Reporter report_;
  mutable std::mutex mu_;
  ConsentPolicy policy_;                 // guarded by mu_
  std::filesystem::path pos_spool_dir_;  // guarded by mu_
  std::vector<PersonalData*> holders_;   // guarded by mu_
  int inbox_scrubs_ = 0;                 // guarded by mu_: tick() rounds still to scrub the inbox
};

/// Erases the subject from POS files in `processed_dir`: a file that names one of `needles`
/// (as a whole word) or an e-mail address whose hash is in `email_hashes` is overwritten with
/// zeros, synced and deleted. Returns how many files (would) go. Thread: any. Fails "io".
Result<int64_t> erasePosFiles(const std::filesystem::path& processed_dir,
                              const std::vector<std::string>& needles,
                              const std::vector<std::string>& email_hashes, const PiiHasher& pii,
                              bool dry_run);

}  // namespace omniedge::omni
