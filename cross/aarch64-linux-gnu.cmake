# Cross-compiles omniedge for 64-bit ARM (Debian arm64) with Debian's crossbuild-essential-arm64
# against the arm64 -dev packages installed through multiarch (dpkg --add-architecture arm64).
# cross/build arm64 installs all of it; by hand:
#   cmake -S . -B build-arm64 -G Ninja -DCMAKE_TOOLCHAIN_FILE=cross/aarch64-linux-gnu.cmake
set(OMNIEDGE_CROSS_TRIPLET aarch64-linux-gnu)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(OMNIEDGE_CROSS_QEMU qemu-aarch64)
include(${CMAKE_CURRENT_LIST_DIR}/debian-multiarch.cmake)
