# Cross-compiles omniedge for 32-bit ARM hard-float (Debian armhf, ARMv7) with Debian's
# crossbuild-essential-armhf against the armhf -dev packages installed through multiarch
# (dpkg --add-architecture armhf). cross/build armhf installs all of it; by hand:
#   cmake -S . -B build-armhf -G Ninja -DCMAKE_TOOLCHAIN_FILE=cross/arm-linux-gnueabihf.cmake
set(OMNIEDGE_CROSS_TRIPLET arm-linux-gnueabihf)
set(CMAKE_SYSTEM_PROCESSOR arm)
set(OMNIEDGE_CROSS_QEMU qemu-arm)
# GCC notes on 32-bit ARM that the passing of some std:: types changed in GCC 7.1; every part of
# the build (Debian's libraries included) is built by GCC 12, so the note is noise, pages of it.
set(CMAKE_CXX_FLAGS_INIT -Wno-psabi)
include(${CMAKE_CURRENT_LIST_DIR}/debian-multiarch.cmake)
