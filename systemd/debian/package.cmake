# The Debian package of a store device (`cpack -G DEB` in the build dir, or the `package`
# target): /usr/bin/omniedge, the phone module in /usr/lib/omniedge/, the unit, its user and
# directories, and /etc/omniedge/omniedge.conf as a conffile. Included at the end of the
# top-level CMakeLists.txt, after every install() rule. docs/operations.md says how to use it.

# Paths come from the top-level install() rules with prefix /usr: the unit in
# /usr/lib/systemd/system (Debian 12's lintian accepts /lib and /usr/lib alike and
# deb-systemd-helper finds both), sysusers.d and tmpfiles.d in /usr/lib, the module in
# /usr/lib/omniedge where the binary looks (bin/../lib/omniedge).
set(OMNIEDGE_DEB_MAINTAINER "omniedge maintainers <maintainers@omniedge.example.org>"
    CACHE STRING "Maintainer field of the Debian package")
set(OMNIEDGE_DEB_HOMEPAGE "https://omniedge.example.org/"
    CACHE STRING "Homepage field of the Debian package")
# A cross build needs the target's -dev packages installed through dpkg multiarch for it.
option(OMNIEDGE_DEB_SHLIBDEPS "Compute the package's Depends with dpkg-shlibdeps" ON)

# The architecture: the host's dpkg answers for a native build; a cross build names its target
# (cross/ sets OMNIEDGE_DEB_ARCH, or it is derived from CMAKE_SYSTEM_PROCESSOR).
set(OMNIEDGE_DEB_ARCH "" CACHE STRING
    "Debian architecture of the package (empty: from dpkg, or from the cross target)")
set(omniedge_deb_arch "${OMNIEDGE_DEB_ARCH}")
if(NOT omniedge_deb_arch AND CMAKE_CROSSCOMPILING)
  string(TOLOWER "${CMAKE_SYSTEM_PROCESSOR}" omniedge_processor)
  if(omniedge_processor MATCHES "^(aarch64|arm64)$")
    set(omniedge_deb_arch arm64)
  elseif(omniedge_processor MATCHES "^arm")
    set(omniedge_deb_arch armhf)
  elseif(omniedge_processor MATCHES "^(x86_64|amd64)$")
    set(omniedge_deb_arch amd64)
  elseif(omniedge_processor MATCHES "^i.86$")
    set(omniedge_deb_arch i386)
  else()
    message(WARNING "package: no Debian architecture for CMAKE_SYSTEM_PROCESSOR "
                    "'${CMAKE_SYSTEM_PROCESSOR}': set OMNIEDGE_DEB_ARCH")
  endif()
endif()
if(NOT omniedge_deb_arch)
  find_program(OMNIEDGE_DPKG dpkg)
  if(OMNIEDGE_DPKG)
    execute_process(COMMAND ${OMNIEDGE_DPKG} --print-architecture
                    OUTPUT_VARIABLE omniedge_deb_arch OUTPUT_STRIP_TRAILING_WHITESPACE)
  endif()
endif()

set(omniedge_deb_dir ${CMAKE_CURRENT_LIST_DIR})

# /usr/share/doc/omniedge: copyright and a Debian changelog (lintian requires both; a version
# without a '-' is a native package, whose changelog is changelog.gz). The changelog's one entry
# carries the date of the commit built, so the same commit gives the same file.
execute_process(COMMAND git log -1 --format=%aD
                WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}
                OUTPUT_VARIABLE OMNIEDGE_DEB_DATE OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
if(NOT OMNIEDGE_DEB_DATE)
  string(TIMESTAMP OMNIEDGE_DEB_DATE "%a, %d %b %Y %H:%M:%S +0000" UTC)
endif()
set(OMNIEDGE_DEB_MAINTAINER_FOR_CHANGELOG "${OMNIEDGE_DEB_MAINTAINER}")
configure_file(${omniedge_deb_dir}/changelog.in ${CMAKE_BINARY_DIR}/debian/changelog @ONLY)
add_custom_command(
  OUTPUT ${CMAKE_BINARY_DIR}/debian/changelog.gz
  COMMAND gzip -9 -n -c ${CMAKE_BINARY_DIR}/debian/changelog
          > ${CMAKE_BINARY_DIR}/debian/changelog.gz
  DEPENDS ${CMAKE_BINARY_DIR}/debian/changelog
  VERBATIM)
add_custom_target(omniedge_deb_changelog ALL DEPENDS ${CMAKE_BINARY_DIR}/debian/changelog.gz)
# README.md too: the unit's Documentation= names /usr/share/doc/omniedge/README.md.
install(FILES ${omniedge_deb_dir}/copyright ${CMAKE_BINARY_DIR}/debian/changelog.gz
              ${CMAKE_SOURCE_DIR}/README.md
        DESTINATION share/doc/omniedge)
# The tags judged acceptable, each with its reason (docs/operations.md lists them too).
install(FILES ${omniedge_deb_dir}/lintian-overrides DESTINATION share/lintian/overrides
        RENAME omniedge)

# The maintainer scripts dpkg runs: user and directories, enable, start only under a running
# systemd, restart on upgrade, stop on remove, state removed on purge. configure_file keeps
# their execute bits in the build dir, which the package's control archive needs.
foreach(script postinst prerm postrm)
  configure_file(${omniedge_deb_dir}/${script} ${CMAKE_BINARY_DIR}/debian/${script} COPYONLY)
endforeach()

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME omniedge)
set(CPACK_PACKAGE_VENDOR omniedge)
set(CPACK_PACKAGE_CONTACT "${OMNIEDGE_DEB_MAINTAINER}")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
# The top-level rules install /etc/omniedge/omniedge.conf at an absolute path: DESTDIR staging
# puts it (and everything else) under the package's root instead of the build host's /etc.
set(CPACK_SET_DESTDIR ON)
set(CPACK_INSTALL_PREFIX /usr)
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
# Release binaries without their debug sections (lintian: unstripped-binary-or-object); the
# build tree keeps the symbols for debugging.
set(CPACK_STRIP_FILES ON)

set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_NAME omniedge)
set(CPACK_DEBIAN_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_DEBIAN_PACKAGE_ARCHITECTURE ${omniedge_deb_arch})
set(CPACK_DEBIAN_PACKAGE_MAINTAINER "${OMNIEDGE_DEB_MAINTAINER}")
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_HOMEPAGE "${OMNIEDGE_DEB_HOMEPAGE}")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "in-store edge agent for omnichannel retail")
# CPack puts the summary on the first line and indents these lines by one space; "." keeps
# the empty line between the paragraphs.
set(CPACK_DEBIAN_PACKAGE_DESCRIPTION
    "omniedge runs on a store's small device: it reads the tills' POS spool,
the in-store BLE beacon gateways and a local kiosk HTTP API, hashes
personal data, keeps every accepted event in a durable SQLite buffer and
delivers it to the centre over MQTT or HTTPS, even after days offline.
.
This package installs the hardened systemd service, its system user and
directories, and a commented configuration in /etc/omniedge.")
# Depends from the ELF files (the binary and the phone module, which links libphonenumber).
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ${OMNIEDGE_DEB_SHLIBDEPS})
# libcurl is dlopen()ed at run time, and only when https.base_url is set (sync/https_client.h),
# so dpkg-shlibdeps cannot see it: without it the agent still runs over MQTT and reports the
# HTTPS uplink as unavailable, hence Recommends rather than Depends.
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "libcurl4 (>= 7.74)")
# Added to what dpkg-shlibdeps computes: the maintainer scripts' tools. deb-systemd-helper
# honours DPKG_ROOT from 1.63 on; adduser makes the user where systemd-sysusers is missing.
set(CPACK_DEBIAN_PACKAGE_DEPENDS "adduser, init-system-helpers (>= 1.63)")
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "mosquitto")
# conffiles: dpkg keeps an administrator's edits of these on upgrade and asks when both changed
# (CMake 3.25's CPack does not mark /etc files by itself).
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    ${CMAKE_BINARY_DIR}/debian/postinst ${CMAKE_BINARY_DIR}/debian/prerm
    ${CMAKE_BINARY_DIR}/debian/postrm ${omniedge_deb_dir}/conffiles)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)

include(CPack)
