/* A stand-in for Windows' bcryptprimitives.dll, for smoke tests under Wine only
 * (scripts/windows-build.sh). Rust's standard library (1.78 and later) takes its random
 * bytes from ProcessPrng in bcryptprimitives.dll, which Windows 10 and later have and
 * Debian 12's Wine 8 does not: without this file every Rust program fails to start under
 * that Wine. ProcessPrng here asks Wine's RtlGenRandom (advapi32's SystemFunction036, the
 * system's CSPRNG). It is never shipped: it is built next to the test binaries only. */
#include <windows.h>
#define SystemFunction036 NTAPI SystemFunction036
#include <ntsecapi.h>
#undef SystemFunction036

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
  while (len > 0) {
    ULONG n = len > 0x7fffffff ? 0x7fffffff : (ULONG)len;
    if (!RtlGenRandom(data, n)) {
      return FALSE;
    }
    data += n;
    len -= n;
  }
  return TRUE;
}
