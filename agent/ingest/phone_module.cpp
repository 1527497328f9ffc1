#include "agent/ingest/phone_module.h"

#include <phonenumbers/phonenumberutil.h>

#include <cstring>
#include <string>

using i18n::phonenumbers::PhoneNumber;
using i18n::phonenumbers::PhoneNumberUtil;

extern "C" int omniedge_phone_e164(const char* number, std::size_t len, const char* region,
                                   char* out, std::size_t out_size) {
  try {
    const PhoneNumberUtil& util = *PhoneNumberUtil::GetInstance();
    PhoneNumber parsed;
    if (util.Parse(std::string(number, len), region, &parsed) !=
            PhoneNumberUtil::NO_PARSING_ERROR ||
        !util.IsValidNumber(parsed)) {
      return -1;
    }
    std::string e164;
    util.Format(parsed, PhoneNumberUtil::E164, &e164);
    if (e164.size() + 1 > out_size) {
      return -2;
    }
    std::memcpy(out, e164.c_str(), e164.size() + 1);
    return static_cast<int>(e164.size());
  } catch (...) {
    return -1;
  }
}

extern "C" int omniedge_phone_region(int code, char* out) {
  try {
    std::string region;
    PhoneNumberUtil::GetInstance()->GetRegionCodeForCountryCode(code, &region);
    if (region.size() != 2 || region == "ZZ") {
      return -1;
    }
    std::memcpy(out, region.c_str(), 3);
    return 0;
  } catch (...) {
    return -1;
  }
}
