// The console's page, script and style, compiled in from cli/console/console.{html,js,css} by
// embed.cmake at build time: the console needs no file beside the binary and no internet.
#pragma once

#include <string_view>

namespace omniedge::console {

extern const std::string_view kConsoleHtml;
extern const std::string_view kConsoleJs;
extern const std::string_view kConsoleCss;

}  // namespace omniedge::console
