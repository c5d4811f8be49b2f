//! Leaving a core to the database server beside pim.
//!
//! `audit verify` on PostgreSQL reads the log as fast as the server's session sends it,
//! and checks it on three threads (the reader, the chain's, the tree's). Where the server
//! runs on the same machine its session is the slowest stage, and where pim's busy threads
//! and the session together are more than the machine's cores, the scheduler moves them
//! among the cores and the session waits its turn: on two cores, the small benchmark's
//! verify took 1.36-1.47 x `sha256sum` with pim's threads free, 1.17-1.26 x with them kept
//! off one core (README, Performance).

/// While it lives, the thread that made it (and the threads that thread starts, which take
/// its CPUs) keeps off one of the CPUs it may run on; dropped, it may run on all of them
/// again.
pub struct Leaving {
    #[cfg(target_os = "linux")]
    before: Option<libc::cpu_set_t>,
    /// Not `Send`: dropped on another thread, it would set that thread's CPUs.
    _here: std::marker::PhantomData<*const ()>,
}

/// One CPU left to a busy process beside this one, when `threads` busy threads of this
/// one and it would be more than the CPUs this thread may use: one other than the CPU this
/// thread is on. Nothing changes on a machine of one CPU, or where they all fit.
pub fn leave_one(threads: usize) -> Leaving {
    #[cfg(target_os = "linux")]
    {
        Leaving {
            before: fewer_cpus(threads),
            _here: std::marker::PhantomData,
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = threads;
        Leaving {
            _here: std::marker::PhantomData,
        }
    }
}

/// The CPUs this thread may use, after it was kept off one of them (`None`: unchanged).
#[cfg(target_os = "linux")]
fn fewer_cpus(threads: usize) -> Option<libc::cpu_set_t> {
    let set = thread_cpus()?;
    let allowed = cpus_in(&set);
    if allowed.len() < 2 || threads < allowed.len() {
        return None;
    }
    // SAFETY: no argument; -1 (no answer) is no CPU.
    let here = usize::try_from(unsafe { libc::sched_getcpu() }).ok();
    let left = *allowed.iter().rev().find(|&&cpu| Some(cpu) != here)?;
    let mut fewer = set;
    // SAFETY: `left` is a CPU of the set (the helper checks its bound too).
    unsafe { libc::CPU_CLR(left, &mut fewer) };
    if !set_thread_cpus(&fewer) {
        return None;
    }
    #[cfg(test)]
    tests::LEFT.set(Some(left));
    Some(set)
}

/// The CPUs this thread may use, as the kernel has them.
#[cfg(target_os = "linux")]
fn thread_cpus() -> Option<libc::cpu_set_t> {
    // SAFETY: the set is plain data, zeroed and then written by the kernel, which writes at
    // most the size it is given.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    (unsafe { libc::sched_getaffinity(0, size, &mut set) } == 0).then_some(set)
}

/// This thread held to the CPUs in `set`; whether the kernel took it.
#[cfg(target_os = "linux")]
fn set_thread_cpus(set: &libc::cpu_set_t) -> bool {
    // SAFETY: the kernel reads the set, of the size it is given.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) == 0 }
}

/// The CPUs in `set`, every bit of it (not only the first CPU_SETSIZE, which the C library
/// of some targets puts lower than the set's size).
#[cfg(target_os = "linux")]
fn cpus_in(set: &libc::cpu_set_t) -> Vec<usize> {
    (0..std::mem::size_of::<libc::cpu_set_t>() * 8)
        // SAFETY: each CPU number is within the set (the helper checks its bound too).
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, set) })
        .collect()
}

impl Drop for Leaving {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Some(set) = self.before.take() {
            set_thread_cpus(&set);
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
pub(crate) mod tests {
    use super::*;

    thread_local! {
        /// The CPU this thread last left to another process (`fewer_cpus`).
        pub(crate) static LEFT: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
    }

    /// The CPUs this thread may use.
    pub(crate) fn cpus() -> Vec<usize> {
        cpus_in(&thread_cpus().expect("this thread's CPUs"))
    }

    /// This thread held to the first two of the CPUs it may use (all of them if fewer).
    pub(crate) fn two_cpus() -> Vec<usize> {
        let two: Vec<usize> = cpus().into_iter().take(2).collect();
        // SAFETY: plain data, zeroed; each CPU number is within the set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for &cpu in &two {
            unsafe { libc::CPU_SET(cpu, &mut set) };
        }
        assert!(set_thread_cpus(&set));
        two
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
                let left = LEFT.get().expect("a CPU was left");
                assert!(all.contains(&left) && !now.contains(&left));
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
