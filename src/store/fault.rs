//! Test-only fault injection: fail the `nth` (0-based) occurrence of a step of atomic writes.

use std::io;
use std::sync::Mutex;

use super::error::Step;

#[derive(Clone, Copy, Debug)]
pub(crate) struct Fault {
    pub step: Step,
    pub nth: usize,
    /// Simulate a crash: leave the temporary file behind instead of cleaning it up.
    pub leave_temp: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Faults {
    armed: Mutex<Option<(Fault, usize)>>,
    fired: Mutex<Option<Fault>>,
}

impl Faults {
    pub(crate) fn arm(&self, fault: Fault) {
        *self.armed.lock().expect("fault lock") = Some((fault, 0));
        *self.fired.lock().expect("fault lock") = None;
    }

    /// The fault that fired since `arm`, if any.
    pub(crate) fn fired(&self) -> Option<Fault> {
        *self.fired.lock().expect("fault lock")
    }

    /// Called before each step: errors when the armed fault matches this occurrence.
    pub(crate) fn hit(&self, step: Step) -> io::Result<()> {
        let mut armed = self.armed.lock().expect("fault lock");
        let Some((fault, seen)) = armed.as_mut() else {
            return Ok(());
        };
        if fault.step != step {
            return Ok(());
        }
        if *seen < fault.nth {
            *seen += 1;
            return Ok(());
        }
        let fault = *fault;
        *armed = None;
        *self.fired.lock().expect("fault lock") = Some(fault);
        Err(io::Error::other(format!("injected fault at {step:?}")))
    }

    pub(crate) fn leaves_temp(&self) -> bool {
        self.fired().is_some_and(|f| f.leave_temp)
    }
}
