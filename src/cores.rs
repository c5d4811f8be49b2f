//! Leaving a core to the database server beside pim.
//!
//! `audit verify` on PostgreSQL reads the log as fast as the server's session sends it,
//! and checks it on three threads (the reader, the chain's, the tree's). Where the server
//! runs on the same machine its session is the slowest stage, and where pim's busy threads
//! and the session together are more than the machine's cores, the scheduler moves them
//! among the cores and the session waits its turn: on two cores, the small benchmark's
//! verify took 1.19-1.44 x `sha256sum` with pim's threads free, 1.11-1.25 x with them held
//! to one core and the other left to the server (README, Performance).

/// While it lives, the thread that made it (and the threads that thread starts, which take
/// its CPUs) keeps off one of the CPUs it may run on; dropped, it may run on all of them
/// again.
pub struct Leaving {
    #[cfg(target_os = "linux")]
    before: Option<libc::cpu_set_t>,
}

/// One CPU left to a busy process beside this one, when `threads` busy threads of this
/// one and it would be more than the CPUs this thread may use: one other than the CPU this
/// thread is on. Nothing changes on a machine of one CPU, or where they all fit.
pub fn leave_one(threads: usize) -> Leaving {
    #[cfg(target_os = "linux")]
    {
        Leaving {
            before: fewer_cpus(threads),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = threads;
        Leaving {}
    }
}

/// The CPUs this thread may use, after it was kept off one of them (`None`: unchanged).
#[cfg(target_os = "linux")]
fn fewer_cpus(threads: usize) -> Option<libc::cpu_set_t> {
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: the set is plain data, zeroed and then written by the kernel (which writes at
    // most `size` bytes); the CPU_* helpers read and write only within it, for CPU numbers
    // below CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size, &mut set) != 0 {
            return None;
        }
        let allowed = usize::try_from(libc::CPU_COUNT(&set)).unwrap_or(0);
        if allowed < 2 || threads < allowed {
            return None;
        }
        let here = libc::sched_getcpu();
        let left = (0..libc::CPU_SETSIZE as usize)
            .rev()
            .find(|&cpu| libc::CPU_ISSET(cpu, &set) && Ok(cpu) != usize::try_from(here))?;
        let mut fewer = set;
        libc::CPU_CLR(left, &mut fewer);
        (libc::sched_setaffinity(0, size, &fewer) == 0).then_some(set)
    }
}

impl Drop for Leaving {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Some(set) = self.before.take() {
            // SAFETY: as in `fewer_cpus`; the set is one the kernel gave this thread.
            unsafe {
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            }
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
pub(crate) mod tests {
    use super::*;

    /// The CPUs this thread may use.
    pub(crate) fn cpus() -> Vec<usize> {
        // SAFETY: as in `fewer_cpus`.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            assert_eq!(
                libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
                0
            );
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect()
        }
    }

    #[test]
    fn one_cpu_is_left_while_the_threads_would_fill_them_all() {
        // On a thread of its own: the test harness's threads are left as they were.
        std::thread::spawn(|| {
            let all = cpus();
            {
                let _fits = leave_one(all.len() - 1);
                assert_eq!(
                    cpus(),
                    all,
                    "the threads and the other fit: nothing changes"
                );
            }
            let leaving = leave_one(all.len());
            let now = cpus();
            if all.len() < 2 {
                assert_eq!(now, all, "one CPU is kept");
            } else {
                assert_eq!(now.len(), all.len() - 1, "{now:?} of {all:?}");
                assert!(now.iter().all(|c| all.contains(c)));
                // A thread started now takes the same CPUs.
                assert_eq!(std::thread::spawn(cpus).join().unwrap(), now);
            }
            drop(leaving);
            assert_eq!(cpus(), all, "every CPU again once dropped");
        })
        .join()
        .unwrap();
    }
}
