# Shared part of the toolchain files in this folder: a Debian cross compiler for
# OMNIEDGE_CROSS_TRIPLET, libraries from Debian multiarch (/usr/lib/<triplet>, headers in
# /usr/include and /usr/include/<triplet>), and qemu-user to run what was built (ctest,
# catch_discover_tests at build time, and the tests' child agents).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_C_COMPILER ${OMNIEDGE_CROSS_TRIPLET}-gcc)
set(CMAKE_CXX_COMPILER ${OMNIEDGE_CROSS_TRIPLET}-g++)
# find_library and find_package look in /usr/lib/<triplet> (and its cmake/ and pkgconfig/), never
# in the build machine's /usr/lib/x86_64-linux-gnu.
set(CMAKE_LIBRARY_ARCHITECTURE ${OMNIEDGE_CROSS_TRIPLET})

# Multiarch has no separate sysroot: the target's libraries live beside the build machine's under
# /, and the cross toolchain's own libc and libstdc++ under /usr/<triplet>. Programs (pkg-config,
# git, python3) are the build machine's.
set(CMAKE_FIND_ROOT_PATH /usr/${OMNIEDGE_CROSS_TRIPLET} /)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# pkg-config (cpp-httplib, and CMake's own modules where they ask it) sees only the target's .pc
# files and the architecture-independent ones. CMake's FindPkgConfig reads these from the
# environment, so they are set for the configure step; cross/build exports them too.
set(ENV{PKG_CONFIG_LIBDIR} /usr/lib/${OMNIEDGE_CROSS_TRIPLET}/pkgconfig:/usr/share/pkgconfig)
set(ENV{PKG_CONFIG_PATH} "")
set(ENV{PKG_CONFIG_SYSROOT_DIR} "")

# qemu-user runs the target's binaries with -L /: the ELF interpreter /lib/ld-linux-<arch>.so.N is
# then multiarch's (package libc6:<arch>), the same glibc build as the libc.so.6 it loads from
# /lib/<triplet>, as on the device. Not -L /usr/<triplet>: that gives the cross toolchain's older
# ld.so (libc6-<arch>-cross), which still loads multiarch's newer libc.so.6 (its search path
# starts at /lib/<triplet>), and the two disagree on the private layout of _rtld_global: the
# first pthread_create spins (arm64) or crashes (armhf) on a thread-stack list read at the wrong
# offset (docs/benchmarks.md, "ARM under qemu-user"). qemu-<arch>-static (package
# qemu-user-static) works the same where it is the one installed.
find_program(OMNIEDGE_CROSS_QEMU_PROGRAM NAMES ${OMNIEDGE_CROSS_QEMU} ${OMNIEDGE_CROSS_QEMU}-static)
if(OMNIEDGE_CROSS_QEMU_PROGRAM)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${OMNIEDGE_CROSS_QEMU_PROGRAM} -L /)
endif()
